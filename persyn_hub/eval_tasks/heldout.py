"""The held-out evaluation split of the bundled data, shared by evaluation and training-data filters.

Rule: a prompt is held out when `int(sha256(normalized text)[:8], 16) % HELDOUT_MODULUS == 0`
(about 10% of rows), where the text is the prompt as the pipeline writes it (ASDiv: "{passage}
{question}"; IFBench: `prompt`) with runs of whitespace collapsed. It depends on nothing but the
text, so duplicated problems fall on the same side. `eval_tasks.items` turns the items into the set
of texts `persyn run` leaves out of its prompts.
"""

from __future__ import annotations

import hashlib

from datasets import Dataset, DatasetDict, load_dataset

from persyn_hub.bundled import bundled_data_file
from persyn_hub.verifiers.instructions import check_instructions
from persyn_hub.verifiers.math_answer import gold_number

HELDOUT_MODULUS = 10


def normalize(text: str) -> str:
    return " ".join((text or "").split())


def is_heldout(text: str) -> bool:
    digest = hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % HELDOUT_MODULUS == 0


def asdiv_heldout() -> Dataset:
    """Held-out ASDiv rows with a numeric gold answer (the verifier can check them), in file order."""

    data = load_dataset("json", data_files=str(bundled_data_file("bundled:asdiv")), split="train")
    data = data.map(lambda row: {"prompt": f"{row['passage']} {row['question']}"})
    return data.filter(lambda row: is_heldout(row["prompt"]) and gold_number(row["answer"]) is not None)


def ifbench_heldout() -> Dataset:
    """Held-out IFBench rows whose instructions can all be checked on this machine, in file order."""

    data = load_dataset("json", data_files=str(bundled_data_file("bundled:ifbench")), split="train")

    def checkable(row: dict) -> bool:
        verdict = check_instructions(
            "a probe response.", row["instruction_id_list"], row["kwargs"], row["prompt"]
        )
        return not verdict.skipped

    return data.filter(lambda row: is_heldout(row["prompt"]) and checkable(row))


def as_test_split(dataset: Dataset) -> DatasetDict:
    return DatasetDict({"test": dataset})
