"""The held-out evaluation split of the bundled data, shared by evaluation and training-data filters.

Rule: a prompt is held out when `int(sha256(normalized text)[:8], 16) % HELDOUT_MODULUS == 0`
(about 10% of rows), where the text is the prompt as the pipeline writes it (ASDiv: "{passage}
{question}"; IFBench: `prompt`) with runs of whitespace collapsed. It depends on nothing but the
text, so duplicated problems fall on the same side, and any run can drop held-out rows from its
training data with `drop_heldout` (`persyn compare` does; see README "Evaluation").
"""

from __future__ import annotations

import hashlib

from datasets import Dataset, DatasetDict, load_dataset

HELDOUT_MODULUS = 10


def normalize(text: str) -> str:
    return " ".join((text or "").split())


def is_heldout(text: str) -> bool:
    digest = hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % HELDOUT_MODULUS == 0


def drop_heldout(dataset: Dataset, text_column: str = "prompt") -> Dataset:
    """Remove rows whose prompt text is in the held-out evaluation split (reads `text_column`)."""
    if text_column not in dataset.column_names:
        raise ValueError(f"drop_heldout: column {text_column!r} missing; columns are {dataset.column_names}.")
    return dataset.filter(
        lambda batch: [not is_heldout(t) for t in batch[text_column]],
        batched=True,
        desc="Dropping held-out rows",
    )


def asdiv_heldout() -> Dataset:
    """Held-out ASDiv rows with a numeric gold answer (the verifier can check them), in file order."""
    from persyn_hub.bundled import bundled_data_file
    from persyn_hub.verifiers.math_answer import gold_number

    data = load_dataset("json", data_files=str(bundled_data_file("bundled:asdiv")), split="train")
    data = data.map(lambda row: {"prompt": f"{row['passage']} {row['question']}"})
    return data.filter(lambda row: is_heldout(row["prompt"]) and gold_number(row["answer"]) is not None)


def ifbench_heldout() -> Dataset:
    """Held-out IFBench rows whose instructions can all be checked on this machine, in file order."""
    from persyn_hub.bundled import bundled_data_file
    from persyn_hub.verifiers.instructions import check_instructions

    data = load_dataset("json", data_files=str(bundled_data_file("bundled:ifbench")), split="train")

    def checkable(row: dict) -> bool:
        verdict = check_instructions(
            "a probe response.", row["instruction_id_list"], row["kwargs"], row["prompt"]
        )
        return not verdict.skipped

    return data.filter(lambda row: is_heldout(row["prompt"]) and checkable(row))


def as_test_split(dataset: Dataset) -> DatasetDict:
    return DatasetDict({"test": dataset})
