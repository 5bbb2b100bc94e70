"""Math answers: is the final answer in a free-text response equal to the gold answer?

Extraction and comparison are math-verify's (LaTeX, boxed answers, plain expressions; numeric and
symbolic equality), not hand-written regexes. Gold answers of word-problem sets carry units
("9 apples", "2.5 (m)"), so only the gold's leading number is parsed. Golds that are not numbers are
compared as ratios/clock times ("3:4", "3:30 p.m.") or as normalized text ("Yes", "Mrs. Hilt").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from math_verify import parse, verify

_LEADING_NUMBER = re.compile(
    r"^\s*\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:\s*/\s*\d+)?)(?=$|[\s(%a-zA-Z$])"
)
_COLON_PAIR = re.compile(r"\b(\d{1,2}):(\d{2}|\d)\b")


@dataclass(frozen=True)
class MathVerdict:
    """The verifier's answer for one row: `correct` is None when the gold answer cannot be checked."""

    correct: Optional[bool]
    detail: str


def gold_number(gold: str) -> Optional[str]:
    """The leading number of a gold answer ("15 balls" -> "15", "1,200 (dollars)" -> "1200"), or None."""
    match = _LEADING_NUMBER.match(gold or "")
    if not match or not re.search(r"\d", match.group(1)):
        return None
    return match.group(1).replace(",", "").replace(" ", "")


def _normalize_text(text: str) -> str:
    return re.sub(r"[^a-z0-9: ]", "", re.sub(r"\s+", " ", text.lower())).strip()


def check_math_answer(response: str, gold: str) -> MathVerdict:
    """Compare the response's final answer with the gold answer (numeric/symbolic via math-verify)."""
    if gold is None or not str(gold).strip():
        return MathVerdict(None, "no gold answer to compare with")
    gold = str(gold).strip()
    if _COLON_PAIR.match(gold):  # ratio or clock time: compare the last a:b in the response
        wanted = _COLON_PAIR.match(gold).groups()
        found = _COLON_PAIR.findall(response or "")
        if not found:
            return MathVerdict(False, f"no a:b answer found (gold {gold!r})")
        got = found[-1]
        same = [int(x) for x in got] == [int(x) for x in wanted]
        return MathVerdict(same, f"ratio/time {':'.join(got)} vs gold {gold!r}")
    number = gold_number(gold)
    if number is not None:
        target = parse(number)
        if not target:
            return MathVerdict(None, f"gold {gold!r}: math-verify cannot parse {number!r}")
        predicted = parse(response or "")
        if not predicted:
            return MathVerdict(False, f"no final answer found (gold {number})")
        correct = bool(verify(target, predicted))
        return MathVerdict(correct, f"answer {predicted[-1]!s} vs gold {number}")
    wanted_text = _normalize_text(gold)
    if not wanted_text:
        return MathVerdict(None, f"gold {gold!r} has no comparable text")
    correct = wanted_text in _normalize_text(response or "")
    return MathVerdict(correct, f"text answer {'found' if correct else 'not found'}: {gold!r}")
