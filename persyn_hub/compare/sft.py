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
from pathlib import Path
from typing import Any, Optional

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from persyn_hub.bundled import resolve_model
from persyn_hub.compare.sft_config import SFTScriptArguments, check_sft_values
from persyn_hub.data_files import LOCAL_BUILDERS, load_local_file, read_text, row_lines
from persyn_hub.errors import PersynError, RecipeError

logger = logging.getLogger(__name__)


class SFTDataError(PersynError, ValueError):
    """The SFT data set is missing, empty or has rows SFT cannot learn from; the message names row and fix."""


def make_parser():
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((SFTScriptArguments, SFTConfig, ModelConfig))


def load_sft_dataset(args: SFTScriptArguments) -> Dataset:
    """Hub id, local save_to_disk folder, or a local data file -> the training split (never empty)."""
    if not args.dataset_name:
        raise SFTDataError(
            "dataset_name: not set; give a Hub data set id, a save_to_disk folder or a .jsonl file."
        )
    path = Path(args.dataset_name)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if args.dataset_train_split not in loaded:
                raise SFTDataError(
                    f"dataset_train_split: {args.dataset_train_split!r} not in {list(loaded)}; set it to one of them."
                )
            loaded = loaded[args.dataset_train_split]
    elif path.suffix in LOCAL_BUILDERS:
        if not path.is_file():
            raise SFTDataError(f"dataset_name: file {args.dataset_name!r} does not exist.")
        loaded = load_local_file(path, "dataset_name", SFTDataError)
    else:
        loaded = load_dataset(
            args.dataset_name,
            args.dataset_config,
            split=args.dataset_train_split,
            revision=args.dataset_revision,
        )
    if len(loaded) == 0:
        raise SFTDataError(
            f"dataset_name: {args.dataset_name!r} has no rows; point dataset_name at a data set with chats "
            "(e.g. a run's artifacts/dataset)."
        )
    return loaded


def to_prompt_completion(dataset: Dataset, messages_column: str = "messages", source: str = "") -> Dataset:
    """`messages` (prompt turns + final assistant turn) -> conversational `prompt` / `completion` columns.

    Reads `messages`; writes `prompt` (list of turns) and `completion` (list with the assistant turn);
    drops every other column. Rows whose chat does not end with a non-empty assistant turn are errors
    naming the row (and its line in a local .jsonl `source`).
    """
    if messages_column not in dataset.column_names:
        raise SFTDataError(
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
                where = f"row {index}" + (f" of {source!r}{row_lines(source, [index])}" if source else "")
                raise SFTDataError(
                    f"{where}: {messages_column!r} must end with a non-empty assistant turn after the "
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

    if not model_args.model_name_or_path:
        raise RecipeError("model_name_or_path: not set; give a Hub id, a local folder or bundled:NAME.")
    dataset = load_sft_dataset(script_args)  # bad data fails before the student loads
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    if script_args.completion_only:
        dataset = to_prompt_completion(dataset, script_args.messages_column, str(script_args.dataset_name))
    elif script_args.messages_column != "messages":
        dataset = dataset.rename_column(script_args.messages_column, "messages")
    model_path = resolve_model(model_args.model_name_or_path)

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
    metrics = {
        **result.metrics,
        "global_step": result.global_step,  # with the epochs done: the budget `persyn compare` reports
        "epoch": trainer.state.epoch,
        "train_rows": len(dataset),
        "output_dir": training_args.output_dir,
    }
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
                values = yaml.safe_load(read_text(path, f"--config: {value!r}", RecipeError))
            except yaml.YAMLError as error:
                raise RecipeError(f"--config: {value!r} is not valid YAML: {one_line(str(error))}") from None
            if values is not None and not isinstance(values, dict):
                raise RecipeError(f"--config: {value!r} must be a YAML mapping of SFT settings.")
            try:  # keys and types, as `persyn validate` checks them: one line instead of argparse's usage text
                check_sft_values(values or {})
            except RecipeError as error:
                raise RecipeError(f"--config: {value!r}: {error}") from None


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
