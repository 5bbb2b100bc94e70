"""Student SFT with TRL on the bundled SmolLM2: the recipe parses, the prompt is masked, training lowers loss."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from persyn_hub.compare.sft import SFTScriptArguments, main, make_parser, to_prompt_completion

SYSTEM = "Solve the math word problem. Think briefly, then end with: The answer is <number>."


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, asdiv_prompts):
    """8 real ASDiv prompts with a short, correct worked answer each (a data set as the pipeline writes it)."""
    path = tmp_path_factory.mktemp("sft-data") / "train.jsonl"
    with path.open("w") as handle:
        for row in asdiv_prompts.select(range(8)):
            chat = [{"role": "system", "content": SYSTEM}, *row["messages"]]
            chat.append({"role": "assistant", "content": f"The answer is {row['answer']}."})
            handle.write(
                json.dumps({"prompt_id": row["prompt_id"], "messages": chat, "teacher": "gold"}) + "\n"
            )
    return path


def completion_loss(model_path: str, rows: list[dict]) -> float:
    """Independent of TRL: mean NLL of the assistant tokens given the chat-templated prompt."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for row in rows:
        prompt_ids = tokenizer.apply_chat_template(
            row["messages"][:-1], add_generation_prompt=True, tokenize=True
        )["input_ids"]
        full_ids = tokenizer.apply_chat_template(row["messages"], tokenize=True)["input_ids"]
        assert full_ids[: len(prompt_ids)] == list(prompt_ids)
        ids = torch.tensor([full_ids])
        labels = ids.clone()
        labels[:, : len(prompt_ids)] = -100
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels)
        n = int((labels[:, 1:] != -100).sum())
        total += float(out.loss) * n
        count += n
    return total / count


def test_demo_recipe_parses_with_trl_parser():
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        args=["--config", "recipes/demo/sft.yaml", "--max_steps", "3"]
    )
    assert isinstance(script_args, SFTScriptArguments) and script_args.completion_only
    assert training_args.max_steps == 3 and training_args.max_length == 256
    assert model_args.model_name_or_path == "bundled:smollm2-135m-instruct"


def test_prompt_tokens_get_label_minus_100(train_file, smollm2_path):
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    data = to_prompt_completion(
        load_dataset("json", data_files=str(train_file), split="train").select(range(2))
    )
    assert data.column_names == ["prompt", "completion"]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    args = SFTConfig(
        output_dir="/tmp/unused-sft",
        max_length=256,
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    for i in range(2):
        prompt_len = len(
            tokenizer.apply_chat_template(data[i]["prompt"], add_generation_prompt=True, tokenize=True)[
                "input_ids"
            ]
        )
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert (labels[:prompt_len] == -100).all(), "prompt tokens must not be trained on"
        real = batch["attention_mask"][i].bool()
        answer = labels[prompt_len:][real[prompt_len:]]
        assert (answer == ids[prompt_len:][real[prompt_len:]]).all() and len(answer) > 3
        assert "The answer is" in tokenizer.decode(answer)


@pytest.mark.slow
def test_sft_lowers_the_loss_on_its_training_data(train_file, tmp_path, smollm2_path):
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    before = completion_loss(smollm2_path, rows)
    out = tmp_path / "student"
    code = main(
        [
            "--config", "recipes/demo/sft.yaml",
            "--dataset_name", str(train_file),
            "--output_dir", str(out),
            "--max_steps", "4",
            "--learning_rate", "1e-4",
            "--logging_steps", "1",
        ]
    )  # fmt: skip
    assert code == 0
    after = completion_loss(str(out), rows)
    assert after < before - 0.1, (before, after)
    card = (out / "README.md").read_text()
    assert str(train_file) in card and "revision `main (unpinned)`" in card
