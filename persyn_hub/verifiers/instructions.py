"""Instruction following: which of a prompt's verifiable instructions does a response satisfy?

IFEval/IFBench rows carry `instruction_id_list` and `kwargs` (one dict per instruction). The checkers
are the `if-verifiable` package's (the official IFBench/IFEval ones); this module only runs them one
instruction at a time, so a checker that needs data this machine lacks (NLTK corpora, which the
package would try to download at import) is reported as skipped instead of failing the whole row or
being counted as a failed instruction. quality = passed / checked (strict mode: the response as it is).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class InstructionVerdict:
    """Per-row outcome: `score` is None when no instruction could be checked."""

    score: Optional[float]
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def detail(self) -> str:
        return json.dumps(
            {"passed": self.passed, "failed": self.failed, "skipped": self.skipped}, ensure_ascii=False
        )


@functools.lru_cache(maxsize=1)
def registries() -> tuple[dict[str, Any], dict[str, Any]]:
    """(IFBench, IFEval) checker registries, imported without letting NLTK reach the network.

    if-verifiable calls `nltk.download(...)` at import for missing corpora; offline that is a network
    attempt (and a delay) for nothing. Checkers that need the missing data raise LookupError when run,
    which `check_instructions` reports as skipped.
    """
    import nltk

    real_download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT as IFBENCH
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT as IFEVAL
    finally:
        nltk.download = real_download
    return dict(IFBENCH), dict(IFEVAL)


def _checker_class(instruction_id: str) -> Any:
    ifbench, ifeval = registries()
    return ifbench.get(instruction_id) or ifeval.get(instruction_id)


def check_instructions(
    response: str, instruction_ids: list[str], kwargs_list: Optional[list[Optional[dict]]], prompt: str
) -> InstructionVerdict:
    """Run each instruction's checker on the response; unknown or data-less checkers are skipped."""
    from if_verifiable.common import strip_thinking

    text = strip_thinking(response or "")
    verdict = InstructionVerdict(score=None)
    kwargs_list = list(kwargs_list or [])
    for index, instruction_id in enumerate(instruction_ids or []):
        key = f"{index}:{instruction_id}"
        checker_class = _checker_class(instruction_id)
        if checker_class is None:
            verdict.skipped[key] = "unknown instruction id (not in IFBench or IFEval checkers)"
            continue
        raw = kwargs_list[index] if index < len(kwargs_list) else None
        arguments = {k: v for k, v in (raw or {}).items() if v is not None}
        try:
            checker = checker_class(instruction_id)
            checker.build_description(**arguments)
            needs = checker.get_instruction_args()
            if needs and "prompt" in needs:
                checker.build_description(prompt=prompt)
            passed = bool(text.strip()) and bool(checker.check_following(text))
        except LookupError as error:  # NLTK data (punkt, stopwords, tagger) not installed
            first_line = str(error).strip().splitlines()
            reason = next((line.strip() for line in first_line if "Resource" in line), "missing NLTK data")
            verdict.skipped[key] = f"checker needs unavailable data: {reason}"
            continue
        except Exception as error:  # noqa: BLE001 - a checker bug is not the response's failure
            verdict.skipped[key] = f"checker error: {type(error).__name__}: {error}"
            continue
        (verdict.passed if passed else verdict.failed).append(key)
    checked = len(verdict.passed) + len(verdict.failed)
    if checked:
        verdict.score = len(verdict.passed) / checked
    return verdict
