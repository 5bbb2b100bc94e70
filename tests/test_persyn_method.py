"""PerSyn as the paper defines it (issue #12), each rule on a small hand-built case with the real parts.

- alpha weights learnability, default 0.4; recipes written for the old meaning are refused or migrated;
- labeled prompts keep their best labeled answer (Generate-then-Select), only the rest are routed;
- router metrics come from the test prompts only, never from the validation prompts;
- procedural (reasoning-gym) answers are extracted and scored by the task's own checker;
- a reference teacher writes its answer from the prompt's columns, and fails a row it cannot fill.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from datasets import Dataset

from persyn_hub.recipe.config import (
    LabelingConfig,
    PersynRecipe,
    ProceduralTask,
    PromptsConfig,
    RecipeError,
    RouterSettings,
    RoutingConfig,
    TeacherConfig,
    recipe_from_dict,
)
from persyn_hub.recipe.migrate import migrate_values
from persyn_hub.router.assignment import LABELED, ROUTED, assign_teachers
from persyn_hub.router.selection import select_best
from persyn_hub.scoring.combine import combine_rewards

DEMO = Path(__file__).parents[1] / "recipes" / "demo" / "asdiv-smollm2.yaml"
NAN = float("nan")


# -- alpha: the weight of learnability ------------------------------------------------------------------


def disagreeing_pool() -> Dataset:
    """One prompt, three teachers: `right` is correct but hard for the student, `learnable` is wrong but
    easy, `other` is wrong and in between."""
    return Dataset.from_dict(
        {
            "prompt_id": ["p"] * 3,
            "teacher": ["right", "learnable", "other"],
            "response": ["The answer is 4.", "The answer is 5.", "The answer is 6."],
            "error": [None, None, None],
            "quality": [1.0, 0.0, 0.0],
            "learnability": [-2.0, -0.4, -1.5],
        }
    )


def test_the_default_alpha_is_the_papers_and_weights_learnability():
    assert LabelingConfig().alpha == 0.4
    default = combine_rewards(disagreeing_pool(), LabelingConfig())
    assert default["reward"][0] > max(default["reward"][1:])  # quality still leads at alpha 0.4
    assert select_best(default) == {"p": "right"}
    mostly_learnability = combine_rewards(disagreeing_pool(), LabelingConfig(alpha=0.9))
    assert mostly_learnability["reward"][1] > max(mostly_learnability["reward"][::2])
    assert select_best(mostly_learnability) == {"p": "learnable"}
    # the formula itself: r = (1 - alpha) * quality_norm + alpha * learnability_norm
    for out, alpha in ((default, 0.4), (mostly_learnability, 0.9)):
        expected = (1 - alpha) * np.array(out["quality_norm"]) + alpha * np.array(out["learnability_norm"])
        np.testing.assert_allclose(out["reward"], expected)


def version_1_values(alpha: float = 0.7) -> dict:
    """The demo recipe as it was written before recipe_version 2 (alpha = quality weight, old key names)."""
    values = yaml.safe_load(DEMO.read_text())
    values.pop("recipe_version")
    values["labeling"]["alpha"] = alpha
    values["router"].pop("validation_fraction")
    values["router"].pop("test_fraction")
    values["router"]["eval_fraction"] = 0.25
    values["routing"]["router"] = "runs/old/router"
    return values


def test_a_version_1_recipe_setting_alpha_is_refused_and_migrate_keeps_its_rewards():
    old = version_1_values(alpha=0.7)
    with pytest.raises(RecipeError, match=r"labeling\.alpha: .*persyn migrate") as error:
        recipe_from_dict(copy.deepcopy(old))
    assert "0.3" in str(error.value)  # it tells the value that keeps the same weighting

    migrated, changes = migrate_values(old)
    assert old["labeling"]["alpha"] == 0.7 and "recipe_version" not in old  # the input is left alone
    assert migrated["recipe_version"] == 2
    assert migrated["labeling"]["alpha"] == pytest.approx(0.3)
    assert migrated["router"]["validation_fraction"] == 0.25 and "eval_fraction" not in migrated["router"]
    assert migrated["routing"]["reuse_router"] == "runs/old/router" and "router" not in migrated["routing"]
    assert any(line.startswith("labeling.alpha: 0.7") for line in changes)
    recipe = recipe_from_dict(copy.deepcopy(migrated))
    assert recipe.labeling.alpha == pytest.approx(0.3)
    assert (recipe.router.validation_fraction, recipe.routing.reuse_router) == (0.25, "runs/old/router")
    # same rewards as the old recipe meant: 0.7 * quality + 0.3 * learnability
    out = combine_rewards(disagreeing_pool(), recipe.labeling)
    expected = 0.7 * np.array(out["quality_norm"]) + 0.3 * np.array(out["learnability_norm"])
    np.testing.assert_allclose(out["reward"], expected)
    # a current recipe is left as it is
    assert migrate_values(migrated) == (migrated, [])


# -- labeled prompts keep their best labeled answer -----------------------------------------------------


def labels_pool() -> Dataset:
    rows = [
        # prompt, teacher, response, error, reward, excluded, quality
        ("p1", "a", "A1", None, 0.2, None, 1.0),
        ("p1", "b", None, "timeout", 0.9, None, None),  # failed: never picked, whatever its reward
        ("p1", "c", "C1", None, 0.5, None, 0.0),
        ("p1", "d", "   ", None, 0.8, None, 1.0),  # blank answer: not usable
        ("p2", "a", "A2", None, 1.0, "no learnability score", 1.0),  # excluded: its reward does not rank
        ("p2", "b", "B2", None, 0.1, None, 0.0),
        ("p2", "c", "C2", None, -0.3, None, 0.0),
        ("p3", "a", "A3", None, 0.5, None, 1.0),  # a tie between a and b
        ("p3", "b", "B3", None, 0.5, None, 1.0),
        ("p4", "a", "A4", None, None, "fewer than 2 usable teachers", 0.0),  # no reward: best quality
        ("p4", "b", "B4", None, None, "fewer than 2 usable teachers", 1.0),
        ("p4", "c", None, "HTTP 500", None, "no usable answer", None),
        ("p5", "a", None, "timeout", None, "no usable answer", None),  # no reward, no quality: first usable
        ("p5", "b", "B5", None, None, "no quality score", None),
        ("p5", "c", "C5", None, None, "no quality score", None),
        ("p6", "a", None, "timeout", None, "no usable answer", None),  # nobody answered
        ("p6", "b", "", None, None, "no usable answer", None),
    ]
    columns = ["prompt_id", "teacher", "response", "error", "reward", "excluded", "quality"]
    return Dataset.from_dict({c: [row[i] for row in rows] for i, c in enumerate(columns)})


def test_select_best_picks_the_highest_usable_reward_with_documented_ties_and_fallbacks():
    labels = labels_pool()
    assert select_best(labels) == {"p1": "c", "p2": "b", "p3": "a", "p4": "b", "p5": "b"}
    # ties and the last fallback follow the given teacher order
    reordered = select_best(labels, teachers=["d", "c", "b", "a"])
    assert (reordered["p3"], reordered["p5"]) == ("b", "c")
    assert (reordered["p1"], reordered["p2"], reordered["p4"]) == ("c", "b", "b")
    # by quality: p1's a and d tie on quality 1.0 but d's answer is blank
    assert select_best(labels, by="quality")["p1"] == "a"
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['reward'\]"):
        select_best(labels.remove_columns("reward"))


def reference_recipe(**routing) -> PersynRecipe:
    return PersynRecipe(
        prompts=PromptsConfig(answer_column="answer"),
        teachers=[
            TeacherConfig(name="a", backend="reference", response_template="{answer}"),
            TeacherConfig(name="b", backend="reference", response_template="The answer is {answer}."),
        ],
        routing=RoutingConfig(batch_size=4, **routing),
    )


@pytest.fixture(scope="module")
def small_router(minilm_path):
    import torch
    from transformers import AutoTokenizer

    from persyn_hub.router import RouterInfo, new_router

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    info = RouterInfo(teachers=["a", "b"], backbone="bundled:minilm-l6-v2", max_length=32)
    return new_router(info, tokenizer), tokenizer


def test_labeled_prompts_keep_their_best_answer_and_only_the_others_are_routed(small_router, asdiv_prompts):
    import torch

    from persyn_hub.router import score_texts

    router, tokenizer = small_router
    prompts = asdiv_prompts.select(range(8))
    ids = prompts["prompt_id"]
    scores = score_texts(prompts["prompt"], router, tokenizer)
    with torch.no_grad():  # centre the untrained head so that it picks both teachers on these prompts
        gaps = sorted(scores[[1, 2, 4, 7], 1] - scores[[1, 2, 4, 7], 0])
        router.classifier.bias[0] += float(gaps[1] + gaps[2]) / 2  # MiniLM: BertForSequenceClassification
    scores = score_texts(prompts["prompt"], router, tokenizer)
    router_pick = {p: ["a", "b"][int(k)] for p, k in zip(ids, scores.argmax(axis=1))}
    labeled_ids = {ids[0], ids[3], ids[5], ids[6]}
    assert {router_pick[p] for p in ids if p not in labeled_ids} == {"a", "b"}  # the case is not degenerate
    # the labeled pool's best answer is the teacher the router would NOT pick, so keeping it shows
    best = {p: "b" if router_pick[p] == "a" else "a" for p in sorted(labeled_ids - {ids[6]})}
    labels = Dataset.from_dict(
        {
            "prompt_id": [p for p in sorted(labeled_ids) for _ in "ab"],
            "teacher": ["a", "b"] * len(labeled_ids),
            "response": ["text" if p != ids[6] else None for p in sorted(labeled_ids) for _ in "ab"],
            "error": [None if p != ids[6] else "timeout" for p in sorted(labeled_ids) for _ in "ab"],
            "reward": [
                (1.0 if best.get(p) == t else 0.0) if p != ids[6] else None
                for p in sorted(labeled_ids)
                for t in "ab"
            ],
            "excluded": [
                None if p != ids[6] else "no usable answer" for p in sorted(labeled_ids) for _ in "ab"
            ],
        }
    )
    selected = select_best(labels, teachers=["a", "b"])
    assert selected == best  # ids[6]: every teacher failed, so it has no best answer

    assigned = assign_teachers(prompts, labeled_ids, selected, router, tokenizer, reference_recipe())
    assert assigned["prompt_id"] == ids  # the prompts' order
    for row in assigned:
        p = row["prompt_id"]
        np.testing.assert_allclose(row["router_scores"], scores[ids.index(p)], rtol=1e-5, atol=1e-6)
        if p in labeled_ids:
            assert (row["teacher"], row["selected_by"], row["labeled"]) == (selected.get(p), LABELED, True)
        else:
            assert (row["teacher"], row["selected_by"], row["labeled"]) == (router_pick[p], ROUTED, False)
    assert sum(s == ROUTED for s in assigned["selected_by"]) == 4

    # budgets bind the routed prompts only: the labeled prompts' answers already exist
    capped = assign_teachers(
        prompts, labeled_ids, selected, router, tokenizer, reference_recipe(budgets={"a": 0.0})
    )
    for row in capped:
        expected = selected.get(row["prompt_id"]) if row["labeled"] else "b"
        assert row["teacher"] == expected
    assert "a" in [capped["teacher"][ids.index(p)] for p in labeled_ids]  # the cap did not touch them


# -- router metrics never read the validation prompts ---------------------------------------------------


def test_router_metrics_come_from_the_test_prompts_and_never_the_validation_prompts(asdiv_prompts, tmp_path):
    from persyn_hub.router import (
        RouterTask,
        pivot_rewards,
        routing_metrics,
        score_texts,
        split_by_prompt,
        train_router,
    )
    from persyn_hub.router.metrics import best_single_teacher

    teachers = ["a", "b", "c"]
    settings = RouterSettings(
        num_train_epochs=1,  # one checkpoint: the validation rewards cannot pick another one
        max_length=32,
        per_device_train_batch_size=8,
        validation_fraction=0.25,
        test_fraction=0.25,
    )
    prompts = asdiv_prompts.select(range(20))
    rng = np.random.default_rng(1)
    base = {(p, t): float(rng.normal() + (t == "a")) for p in prompts["prompt_id"] for t in teachers}

    def pool(rewards: dict) -> Dataset:
        keys = list(rewards)
        text = dict(zip(prompts["prompt_id"], prompts["prompt"]))
        return Dataset.from_dict(
            {
                "prompt_id": [p for p, _ in keys],
                "prompt": [text[p] for p, _ in keys],
                "teacher": [t for _, t in keys],
                "reward": [rewards[k] for k in keys],
                "excluded": [None] * len(keys),
            }
        )

    table = pivot_rewards(pool(base), teachers)
    splits = split_by_prompt(table, settings.validation_fraction, settings.test_fraction, seed=0)
    validation = set(splits.validation.prompt_ids)
    # corrupt ONLY the validation prompts: c becomes hugely best there, so a metric that read them
    # (a best single teacher chosen on train + validation, an oracle share) would change
    corrupted = {
        (p, t): (100.0 if t == "c" else -100.0) if p in validation else r for (p, t), r in base.items()
    }
    train_ids, test_ids = splits.train.prompt_ids, splits.test.prompt_ids
    dirty_splits = split_by_prompt(pivot_rewards(pool(corrupted), teachers), 0.25, 0.25, seed=0)
    assert dirty_splits.validation.prompt_ids == splits.validation.prompt_ids  # the same split
    np.testing.assert_array_equal(dirty_splits.test.rewards, splits.test.rewards)
    np.testing.assert_array_equal(dirty_splits.train.rewards, splits.train.rewards)
    assert best_single_teacher(splits.train.rewards) != 2
    assert best_single_teacher(np.vstack([splits.train.rewards, dirty_splits.validation.rewards])) == 2

    results = []
    for name, rewards in (("clean", base), ("corrupted", corrupted)):
        result = train_router(
            pool(rewards),
            settings,
            RouterTask(teachers, student="s", alpha=0.4, seed=0),
            output_dir=str(tmp_path / name),
        )
        metrics = result.metrics
        assert metrics["test_prompt_ids"] == test_ids
        assert set(metrics["validation_prompt_ids"]) == validation
        assert metrics["train_prompt_ids"] == train_ids
        assert not validation & set(metrics["test_prompt_ids"])
        assert not (set(train_ids) & validation or set(train_ids) & set(test_ids))
        assert metrics["split_sizes"] == {"train": 10, "validation": 5, "test": 5}
        assert sum(metrics["split_sizes"].values()) == len(table) == 20
        # every test metric, recomputed from the router's own scores, test rewards and train rewards
        rows = [table.prompt_ids.index(p) for p in metrics["test_prompt_ids"]]
        scores = score_texts([table.prompts[i] for i in rows], result.router, result.tokenizer)
        by_hand = routing_metrics(
            scores, table.rewards[rows], splits.train.rewards, teachers, settings.tie_margin, seed=0
        )
        # `oracle_share` is over all labeled prompts in the run's metrics; the test split's is `oracle_share_test`
        by_hand["oracle_share_test"] = by_hand.pop("oracle_share")
        differing = [
            k
            for k in by_hand
            if json.dumps(metrics[k], sort_keys=True) != json.dumps(by_hand[k], sort_keys=True)
        ]
        assert not differing, {k: (metrics[k], by_hand[k]) for k in differing}
        results.append(metrics)

    clean, dirty = results
    # the validation rewards reached the run (loss and the all-prompts oracle share) ...
    assert dirty["validation_loss"] != clean["validation_loss"]
    assert dirty["oracle_share"]["c"] > clean["oracle_share"]["c"]
    # ... and no test metric moved
    same = set(clean) - {"validation_loss", "oracle_share"}
    assert json.dumps({k: clean[k] for k in same}, sort_keys=True) == json.dumps(
        {k: dirty[k] for k in same}, sort_keys=True
    )


# -- procedural tasks: answer extraction and the task's own checker -------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("12 - 53 = -41. The answer is -41.", "-41"),
        ("The answer is: **-7**.", "-7"),
        ("**The answer is 12**", "12"),
        ("Thinking... <answer> 3/4 </answer> (so the answer is 1)", "3/4"),
        ("<answer>1</answer> then <answer>\n2\n</answer>", "2"),
        ("First the answer is 5, no wait, the answer is 6.", "6"),
        ("Let me add.\n3 + 4\n\n7\n", "7"),
        ("`42`.", "42"),
        ("", ""),
    ],
)
def test_extract_final_answer(response, expected):
    from persyn_hub.procedural import extract_final_answer

    assert extract_final_answer(response) == expected


@pytest.fixture(scope="module")
def arithmetic():
    from persyn_hub.procedural import generate_tasks

    config = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
    return generate_tasks([ProceduralTask(name="basic_arithmetic", size=5, config=config)], seed=0)


def test_generated_tasks_are_seeded_and_scored_by_their_own_checker(arithmetic):
    from persyn_hub.procedural import generate_tasks, score_procedural

    assert arithmetic.column_names == ["question", "answer", "metadata", "task"]
    assert len(arithmetic) == 5 and set(arithmetic["task"]) == {"basic_arithmetic"}
    config = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}
    again = generate_tasks([ProceduralTask(name="basic_arithmetic", size=5, config=config)], seed=0)
    assert again["question"] == arithmetic["question"]
    for row in arithmetic:
        gold = row["answer"]
        for right in (f"The answer is {gold}.", f"<answer>{gold}</answer>", f"Work.\n**{gold}**"):
            score, detail = score_procedural(right, row["question"], gold, row["metadata"])
            assert score == 1.0, (right, detail)
        wrong = str(int(gold) + 1) if gold.lstrip("-").isdigit() else gold + "1"
        score, detail = score_procedural(f"The answer is {wrong}.", row["question"], gold, row["metadata"])
        assert score is not None and score < 1.0 and detail.startswith("basic_arithmetic")
    assert any(row["answer"].startswith("-") for row in arithmetic)  # negative golds are covered
    row = arithmetic[0]
    assert score_procedural("7", row["question"], row["answer"], "not json")[0] is None
    assert score_procedural("7", row["question"], row["answer"], "{}") == (
        None,
        "metadata has no source_dataset (not a reasoning-gym row)",
    )


def test_an_unknown_task_is_named(arithmetic):
    from persyn_hub.procedural import ProceduralTaskError, generate_tasks

    with pytest.raises(
        ProceduralTaskError, match=r"prompts\.tasks\[0\] \('basic_arithmatic'\)\.name.*basic_arithmetic"
    ):
        generate_tasks([ProceduralTask(name="basic_arithmatic", size=2)], seed=0)


# -- reference teachers -----------------------------------------------------------------------------------


def test_a_reference_teacher_writes_its_template_and_fails_rows_it_cannot_fill(tmp_path, arithmetic):
    from persyn_hub.generation import generate_responses

    metadata = list(arithmetic["metadata"][:2]) + [json.dumps({"source_dataset": "basic_arithmetic"})]
    prompts = Dataset.from_dict(
        {
            "prompt_id": ["p0", "p1", "p2"],
            "messages": [[{"role": "user", "content": q}] for q in arithmetic["question"][:3]],
            "answer": arithmetic["answer"][:3],
            "metadata": metadata,
        }
    )
    teacher = TeacherConfig(
        name="solver",
        backend="reference",
        response_template="{metadata[expression]} = {answer}. The answer is {answer}.",
    )
    out, stats = generate_responses(prompts, teacher, checkpoint_dir=tmp_path / "ckpt")
    expressions = [json.loads(m)["expression"] for m in metadata[:2]]
    assert out["response"][:2] == [
        f"{e} = {a}. The answer is {a}." for e, a in zip(expressions, arithmetic["answer"][:2])
    ]
    assert out["error"][:2] == [None, None] and out["teacher"] == ["solver"] * 3
    assert out["finish_reason"][:2] == ["reference", "reference"]
    assert out["response"][2] is None
    assert "reference" in out["error"][2] and "expression" in out["error"][2]
    assert (stats.requests, stats.failures, stats.completion_tokens) == (0, 1, 0)
    assert not (tmp_path / "ckpt").exists()  # nothing generated, nothing checkpointed

    empty = prompts.map(lambda row: {"answer": "" if row["prompt_id"] == "p1" else row["answer"]})
    out, _ = generate_responses(empty, teacher, checkpoint_dir=tmp_path / "ckpt")
    assert out["response"][1] is None and "['answer'] empty" in out["error"][1]
    with pytest.raises(ValueError, match=r"\['solution'\] are not in the prompts"):
        generate_responses(
            prompts,
            TeacherConfig(name="x", backend="reference", response_template="{solution}"),
            checkpoint_dir=tmp_path / "ckpt",
        )
