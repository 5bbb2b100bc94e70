"""Fine-tune the student on a PerSyn (or baseline) data set with TRL's SFTTrainer.

Launch (one CPU or GPU; recipes/accelerate_configs/ has multi-GPU DDP and DeepSpeed ZeRO-3 configs):

    accelerate launch --config_file recipes/accelerate_configs/single_device.yaml \\
        -m persyn_hub.compare.sft --config recipes/demo/sft.yaml

or `persyn sft --config recipes/demo/sft.yaml`. Any key overrides the YAML: `--max_steps 20`.

The recipe is read the way TRL's `sft` script and open-r1 read theirs: `TrlParser` over three
dataclasses, `SFTScriptArguments` (which data: a Hub id, a local `save_to_disk` folder, or a
.jsonl/.json/.parquet/.csv file; split; revision), TRL's `SFTConfig` (training) and `ModelConfig`
(student: a Hub id, a local folder, or `bundled:NAME`).

Loss on the assistant turn only: the data's `messages` (prompt turns + one final assistant turn) are
split into TRL's conversational prompt/completion form (`prompt` = all turns but the last,
`completion` = the last assistant turn). SFTTrainer then masks the prompt tokens (label -100) for
any chat template. `assistant_only_loss=True` would need `{% generation %}` markers, which
SmolLM2's template lacks. Set `completion_only: false` to train on every token.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from persyn_hub.errors import RecipeError

logger = logging.getLogger(__name__)

LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class SFTScriptArguments:
    """Which data set to train on (names as in TRL's ScriptArguments where they overlap)."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "Hub data set id, local save_to_disk folder, or .jsonl/.json/.parquet/.csv file."},
    )
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Hub data set config name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_revision: Optional[str] = field(
        default=None,
        metadata={"help": "Hub data set revision (branch, tag or commit); recorded in the card."},
    )
    messages_column: str = field(default="messages", metadata={"help": "Column with the chat to learn."})
    completion_only: bool = field(
        default=True,
        metadata={"help": "Train on the final assistant turn only (prompt tokens get label -100)."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep the first N rows (debugging)."}
    )


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))


def load_sft_dataset(args: SFTScriptArguments) -> Dataset:
    """Hub id, local save_to_disk folder, or a local data file -> the training split."""
    if not args.dataset_name:
        raise ValueError(
            "dataset_name: not set; give a Hub data set id, a save_to_disk folder or a .jsonl file."
        )
    path = Path(args.dataset_name)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if args.dataset_train_split not in loaded:
                raise ValueError(f"dataset_train_split: {args.dataset_train_split!r} not in {list(loaded)}.")
            loaded = loaded[args.dataset_train_split]
        return loaded
    if path.suffix in LOCAL_BUILDERS:
        if not path.is_file():
            raise ValueError(f"dataset_name: file {args.dataset_name!r} does not exist.")
        return load_dataset(LOCAL_BUILDERS[path.suffix], data_files=str(path), split="train")
    return load_dataset(
        args.dataset_name, args.dataset_config, split=args.dataset_train_split, revision=args.dataset_revision
    )


def to_prompt_completion(dataset: Dataset, messages_column: str = "messages") -> Dataset:
    """`messages` (prompt turns + final assistant turn) -> conversational `prompt` / `completion` columns.

    Reads `messages`; writes `prompt` (list of turns) and `completion` (list with the assistant turn);
    drops every other column. Rows whose chat does not end with a non-empty assistant turn are errors.
    """
    if messages_column not in dataset.column_names:
        raise ValueError(
            f"messages_column: {messages_column!r} is not a column; the data set has {dataset.column_names}."
        )

    def split(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        prompts, completions = [], []
        for chat, index in zip(batch[messages_column], indices):
            if (
                not chat
                or len(chat) < 2
                or chat[-1].get("role") != "assistant"
                or not chat[-1].get("content")
            ):
                raise ValueError(
                    f"row {index}: {messages_column!r} must end with a non-empty assistant turn after the "
                    "prompt turns; fix or filter the row."
                )
            prompts.append([{"role": m["role"], "content": m["content"]} for m in chat[:-1]])
            completions.append([{"role": "assistant", "content": chat[-1]["content"]}])
        return {"prompt": prompts, "completion": completions}

    return dataset.map(
        split, batched=True, with_indices=True, remove_columns=dataset.column_names, desc="prompt/completion"
    )


def model_card_note(args: SFTScriptArguments) -> str:
    """The provenance lines added to the trained student's card: data set repo and revision."""
    revision = args.dataset_revision or "main (unpinned)"
    return (
        "\n## PerSyn provenance\n\n"
        f"- Training data set: `{args.dataset_name}` (split `{args.dataset_train_split}`, revision `{revision}`)\n"
        f"- Loss: {'final assistant turn only (prompt tokens masked)' if args.completion_only else 'all tokens'}\n"
        "- Trained with `persyn_hub.compare.sft` (TRL SFTTrainer).\n"
    )


def train(script_args: SFTScriptArguments, training_args, model_args) -> dict[str, Any]:
    """Load data and student, train, save (and push) with a card; returns the training metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from persyn_hub.bundled import resolve_model

    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path: not set; give a Hub id, a local folder or bundled:NAME.")
    model_path = resolve_model(model_args.model_name_or_path)
    dataset = load_sft_dataset(script_args)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    if script_args.completion_only:
        dataset = to_prompt_completion(dataset, script_args.messages_column)
    elif script_args.messages_column != "messages":
        dataset = dataset.rename_column(script_args.messages_column, "messages")

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training_args.trust_remote_code,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=training_args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
        trainer.create_model_card(dataset_name=script_args.dataset_name, tags=["persyn", "distillation"])
        card = Path(training_args.output_dir) / "README.md"
        card.write_text(card.read_text(encoding="utf-8") + model_card_note(script_args), encoding="utf-8")
        if training_args.push_to_hub:
            from huggingface_hub import HfApi

            repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
            api = HfApi()
            api.create_repo(repo_id, private=bool(training_args.hub_private_repo), exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=training_args.output_dir,
                commit_message=f"SFT on {script_args.dataset_name}",
                ignore_patterns=["checkpoint-*", "*.pt", "runs/*"],
            )
    metrics = {**result.metrics, "train_rows": len(dataset), "output_dir": training_args.output_dir}
    trainer.accelerator.wait_for_everyone()
    return metrics


def check_config_flag(argv: Optional[list[str]]) -> None:
    """`--config FILE` must name a readable YAML mapping; checked before TRL's parser opens it."""
    import yaml

    arguments = list(sys.argv[1:] if argv is None else argv)
    for index, argument in enumerate(arguments):
        if argument == "--config" or argument.startswith("--config="):
            value = (
                argument.split("=", 1)[1]
                if "=" in argument
                else (arguments[index + 1 : index + 2] or [""])[0]
            )
            path = Path(value)
            if not path.is_file():
                raise RecipeError(
                    f"--config: file {value!r} not found; give an SFT recipe, e.g. recipes/demo/sft.yaml."
                )
            try:
                values = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as error:
                raise RecipeError(f"--config: {value!r} is not valid YAML: {one_line(str(error))}") from None
            if values is not None and not isinstance(values, dict):
                raise RecipeError(f"--config: {value!r} must be a YAML mapping of SFT settings.")


def one_line(text: str) -> str:
    return " ".join(text.split())[:400]


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m persyn_hub.compare.sft --config recipes/demo/sft.yaml [--key value ...]`."""
    check_config_flag(argv)
    try:
        script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    except ValueError as error:  # TrlParser: unknown keys, wrong types in the YAML
        raise RecipeError(f"--config: {one_line(str(error))}") from error
    metrics = train(script_args, training_args, model_args)
    logger.info("SFT finished: %s", metrics)
    print(
        {k: v for k, v in metrics.items() if k in ("train_loss", "train_runtime", "train_rows", "output_dir")}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
