"""Quality on real rows: ASDiv math answers, IFBench instruction checks, and a real (tiny) reward model."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

from persyn_hub.data import load_prompts
from persyn_hub.recipe.config import PromptsConfig, QualityConfig
from persyn_hub.scoring.quality import score_quality
from persyn_hub.scoring.reward_model import RewardModelError
from persyn_hub.verifiers.math_answer import check_math_answer, gold_number


def _wrong(gold: str) -> str:
    return str(int(float(gold_number(gold))) + 3)


# ---------------------------------------------------------------------------------------------- math


def test_math_verifier_on_real_asdiv_rows(asdiv_prompts):
    # Single-number golds: a multi-part gold ("336 marbles; 144 marbles") needs every number in the answer.
    numeric = [
        row
        for row in asdiv_prompts
        if (gold_number(row["answer"]) or "x").isdigit() and ";" not in row["answer"]
    ][:8]
    assert len(numeric) >= 5
    rows = []
    for row in numeric:
        gold = gold_number(row["answer"])
        rows += [
            {
                **row,
                "teacher": "right",
                "response": f"We add them up, so the answer is {gold}.",
                "error": None,
            },
            {**row, "teacher": "boxed", "response": f"Reasoning...\n\\boxed{{{gold}}}", "error": None},
            {**row, "teacher": "wrong", "response": f"The answer is {_wrong(row['answer'])}.", "error": None},
            {**row, "teacher": "none", "response": "I am not sure.", "error": None},
            {**row, "teacher": "failed", "response": None, "error": "timeout: no output"},
            {**row, "teacher": "empty", "response": " \n", "error": None},  # unusable: never scored as 0
        ]
    scored = score_quality(Dataset.from_list(rows), QualityConfig(kind="math_answer"))
    by_teacher: dict[str, list] = {}
    for row in scored:
        by_teacher.setdefault(row["teacher"], []).append(row["quality"])
    assert by_teacher["right"] == [1.0] * len(numeric)
    assert by_teacher["boxed"] == [1.0] * len(numeric)
    assert by_teacher["wrong"] == [0.0] * len(numeric)
    assert by_teacher["none"] == [0.0] * len(numeric)
    assert by_teacher["failed"] == [None] * len(numeric)
    assert by_teacher["empty"] == [None] * len(numeric)
    assert set(scored.filter(lambda r: r["teacher"] == "empty")["quality_detail"]) == {"empty answer"}
    assert all(
        d.startswith("generation failed")
        for d in scored.filter(lambda r: r["teacher"] == "failed")["quality_detail"]
    )


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        ("Seven plus two makes 9 apples in total.", "9 apples", True),
        ("So it costs $1,200.", "1,200 (dollars)", True),
        ("Half a cup: 1/2", "0.5 (cup)", True),  # symbolic/numeric equality, not string equality
        ("The ratio is 3:4.", "3:4", True),
        ("The ratio is 4:3.", "3:4", False),
        ("She left at 3:30 p.m.", "3:30 p.m.", True),
        ("Mrs. Hilt ate more.", "Mrs. Hilt", True),
        ("It is 16.", "15 balls", False),
    ],
)
def test_math_verifier_gold_shapes(response, gold, expected):
    assert check_math_answer(response, gold).correct is expected


def test_math_requires_answer_column():
    with pytest.raises(ValueError, match="answer_column"):
        score_quality(Dataset.from_dict({"response": ["9"]}), QualityConfig(kind="math_answer"))


# ------------------------------------------------------------------------------ reasoning-gym tasks


def test_reasoning_gym_quality_uses_each_tasks_checker_on_generated_prompts():
    from persyn_hub.recipe.config import ProceduralTask

    tasks = [
        ProceduralTask(name="basic_arithmetic", size=3, config={"max_terms": 2, "max_digits": 2}),
        ProceduralTask(
            name="basic_arithmetic", size=2, config={"min_terms": 3, "max_terms": 3}, label="long_arithmetic"
        ),
    ]
    config = PromptsConfig(source="reasoning-gym", tasks=tasks, shuffle=False, drop_eval_items=False)
    prompts = load_prompts(config, seed=0)
    assert {"prompt_id", "messages", "prompt", "answer", "metadata", "task"} <= set(prompts.column_names)
    assert prompts["task"] == ["basic_arithmetic"] * 3 + ["long_arithmetic"] * 2
    golds = prompts["answer"]
    responses = [f"Working it out... The answer is **{golds[0]}**.", f"<answer>{golds[1]}</answer>"]
    responses += [f"The answer is {int(golds[2]) + 1}.", "I do not know.", None]
    errors = [None, None, None, None, "HTTP 503"]
    scored = score_quality(
        prompts.add_column("response", responses).add_column("error", errors),
        QualityConfig(kind="reasoning_gym"),
    )
    quality, detail = scored["quality"], scored["quality_detail"]
    assert quality[:2] == [1.0, 1.0]
    assert quality[2] < 1.0 and quality[3] < 1.0
    assert quality[4] is None and detail[4].startswith("generation failed")
    assert detail[0].startswith("basic_arithmetic:")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['metadata'\]"):
        score_quality(
            scored.remove_columns(["metadata", "quality", "quality_detail"]),
            QualityConfig(kind="reasoning_gym"),
        )


# ------------------------------------------------------------------------------ instruction following


@pytest.fixture(scope="module")
def ifbench():
    config = PromptsConfig(
        source="bundled:ifbench", keep_columns=["instruction_id_list", "kwargs"], shuffle=False
    )
    data = load_prompts(config, seed=0)
    return {row["prompt_id"]: row for row in data}


def _nltk_has(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
        return True
    except LookupError:
        return False


def test_instruction_checks_on_real_ifbench_rows(ifbench):
    keywords = ifbench["2"]  # door once, bread twice, blue three, lamp five, river seven times
    assert keywords["instruction_id_list"] == ["count:keywords_multiple"]
    good = "door " + "bread " * 2 + "blue " * 3 + "lamp " * 5 + "river " * 7
    no_space = ifbench["296"]  # "The output should not contain any whitespace."
    mixed = ifbench["133"]  # sub-bullets (pure text check) + stop-word ratio (needs NLTK stopwords)
    title = ifbench["291"]  # title case (needs NLTK punkt_tab)
    bullets = "* First point\n  - detail one\n* Second point\n  - detail two"
    rows = [
        {**keywords, "teacher": "good", "response": good.strip(), "error": None},
        {**keywords, "teacher": "bad", "response": "A door and some bread.", "error": None},
        {**no_space, "teacher": "good", "response": "No,notallclassesaresets.", "error": None},
        {**no_space, "teacher": "bad", "response": "No, not all classes are sets.", "error": None},
        {**mixed, "teacher": "good", "response": bullets, "error": None},
        {
            **title,
            "teacher": "good",
            "response": "Political Ideologies Of The Liberal Democratic Party",
            "error": None,
        },
        {**title, "teacher": "failed", "response": None, "error": "HTTP 503"},
    ]
    scored = score_quality(Dataset.from_list(rows), QualityConfig(kind="instruction_following"))
    assert scored["quality"][:4] == [1.0, 0.0, 1.0, 0.0]
    mixed_detail = json.loads(scored[4]["quality_detail"])
    assert "0:format:sub-bullets" in mixed_detail["passed"]
    if _nltk_has("corpora/stopwords"):
        assert not mixed_detail["skipped"]
    else:  # the stop-word check cannot run here: skipped, not failed, and not in the score
        assert "1:ratio:stop_words" in mixed_detail["skipped"] and scored[4]["quality"] == 1.0
    title_detail = json.loads(scored[5]["quality_detail"])
    if not _nltk_has("tokenizers/punkt_tab"):
        assert scored[5]["quality"] is None and "0:format:title_case" in title_detail["skipped"]
    assert scored[6]["quality"] is None and scored[6]["quality_detail"].startswith("generation failed")


def test_instruction_following_names_missing_columns(ifbench):
    with pytest.raises(ValueError, match="keep_columns"):
        score_quality(
            Dataset.from_dict({"response": ["x"], "prompt": ["p"]}),
            QualityConfig(kind="instruction_following"),
        )


# ------------------------------------------------------------------------------------- reward model


def _preference_rows(rows):
    """Real ASDiv rows: the correct answer is chosen, a wrong one rejected."""
    out = []
    for row in rows:
        gold = gold_number(row["answer"])
        if gold is None or not gold.lstrip("-").isdigit():
            continue
        prompt = [{"role": "user", "content": row["prompt"]}]
        out.append(
            {
                "chosen": prompt + [{"role": "assistant", "content": f"The answer is {gold}."}],
                "rejected": prompt
                + [{"role": "assistant", "content": f"The answer is {_wrong(row['answer'])}."}],
            }
        )
    return out


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, smollm2_path):
    """A reward model trained here with TRL's RewardTrainer on the bundled SmolLM2 backbone (seconds)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    asdiv = load_prompts(PromptsConfig(source="bundled:asdiv", num_prompts=40, drop_duplicates=True), seed=1)
    pairs = Dataset.from_list(_preference_rows(asdiv.select(range(12))))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForSequenceClassification.from_pretrained(smollm2_path, num_labels=1)
    for (
        parameter
    ) in model.model.parameters():  # train the reward head only: real RewardTrainer run, seconds on CPU
        parameter.requires_grad_(False)
    out = tmp_path_factory.mktemp("reward_model")
    args = RewardConfig(
        output_dir=str(out / "train"),
        num_train_epochs=4,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        max_length=256,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    trainer.model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return str(out / "model"), pairs


@pytest.mark.slow
def test_reward_model_scores_match_direct_forward_and_rank_training_pairs(reward_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, pairs = reward_model_dir
    rows = []
    for index, pair in enumerate(pairs.select(range(6))):
        messages = pair["chosen"][:-1]
        rows.append(
            {
                "prompt_id": str(index),
                "messages": messages,
                "teacher": "right",
                "response": pair["chosen"][-1]["content"],
                "error": None,
            }
        )
        rows.append(
            {
                "prompt_id": str(index),
                "messages": messages,
                "teacher": "wrong",
                "response": pair["rejected"][-1]["content"],
                "error": None,
            }
        )
    rows.append(
        {
            "prompt_id": "x",
            "messages": rows[0]["messages"],
            "teacher": "failed",
            "response": None,
            "error": "boom",
        }
    )
    scored = score_quality(
        Dataset.from_list(rows),
        # float32 pinned: "auto" may resolve to bfloat16 on this CPU, the reference forward below is float32
        QualityConfig(kind="reward_model", reward_model=path, batch_size=4, dtype="float32"),
    )
    assert scored[-1]["quality"] is None and scored[-1]["quality_detail"].startswith("generation failed")
    # independent: one conversation at a time, no padding, tokenized by apply_chat_template
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    for row, out in zip(rows[:-1], scored):
        ids = tokenizer.apply_chat_template(
            row["messages"] + [{"role": "assistant", "content": row["response"]}],
            tokenize=True,
            return_dict=True,
        )["input_ids"]
        with torch.no_grad():
            expected = model(torch.tensor([list(ids)])).logits[0, 0].item()
        assert out["quality"] == pytest.approx(expected, abs=1e-4)
    # the trained model prefers the right answer on most of its training pairs
    right = scored.filter(lambda r: r["teacher"] == "right")["quality"]
    wrong = scored.filter(lambda r: r["teacher"] == "wrong")["quality"]
    assert sum(a > b for a, b in zip(right, wrong)) >= 4


def test_reward_model_with_wrong_head_is_refused(tmp_path, smollm2_path):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(smollm2_path, num_labels=3)
    config.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(smollm2_path).save_pretrained(tmp_path)
    rows = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "hi"}], "response": "hello", "error": None}]
    )
    with pytest.raises(RewardModelError, match="num_labels=3"):
        score_quality(rows, QualityConfig(kind="reward_model", reward_model=str(tmp_path)))
    with pytest.raises(RewardModelError, match="num_labels"):  # a causal LM is not a reward model either
        score_quality(rows, QualityConfig(kind="reward_model", reward_model="bundled:smollm2-135m-instruct"))
