"""Math answers: is the final answer in a free-text response equal to the gold answer?

Gold answers come in several styles, and each is read the way its data set means it:

- GSM8K: a worked solution ending in `#### 72`; the number after the last `####` is the gold.
- MATH / LaTeX: `\\frac{3}{4}`, `\\sqrt{2}`, `(1,2)`, `[0, 1)`, `x=5`, `\\boxed{...}`, or a plain expression
  (`p - q`, `3, 5, 7`); parsed by math-verify (a bare expression is wrapped in `$...$` first) and compared
  numerically/symbolically, so fractions, roots, tuples, intervals, sets and matrices compare by value.
- Word problems (ASDiv): a number with units ("9 apples", "2.5 (m)", "1,200 dollars"), several of them
  ("6 cm; 15 cm"), a ratio or clock time ("3:4", "3:30 p.m."), or text ("Yes", "Mrs. Hilt").

A gold that looks mathematical but cannot be parsed is reported (`correct=None`), never guessed at.
The response's final answer is math-verify's: a boxed answer first, then "the answer is X", then the
last expression (a GSM8K-style response ending in `#### n` answers n). Extraction and comparison are
math-verify's, not hand-written regexes, except for the shapes math-verify has no notion of: the `####`
marker, units, multi-part answers, ratios/clock times and text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Optional

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

RULES_VERSION = 2
"""Bumped whenever verdicts change (2: GSM8K/LaTeX golds, multi-part golds, unparseable golds reported),
so a cache of quality scores can be keyed on it; the math-verify version alone does not cover these rules."""

# The word-problem gold's leading number. Its exact behaviour on ASDiv golds is relied on by the
# held-out split (persyn_hub/eval_tasks/heldout.py keeps the rows where it finds a number).
_LEADING_NUMBER = re.compile(
    r"^\s*\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:\s*/\s*\d+)?)(?=$|[\s(%a-zA-Z$])"
)
# What may follow a word-problem gold's number: an ordinal suffix, a percent sign, or words (units).
_UNIT_REST = re.compile(r"(?:st|nd|rd|th)?(?:\s*%|(?:\s*\(|\s+)[A-Za-z$][^+*=^<>|\\{}]*)?\s*\.?")
_COLON_PAIR = re.compile(r"\b(\d{1,2}):(\d{2}|\d)\b")
_GSM8K_NUMBER = re.compile(r"^\s*\$?\s*(-?(?:\d[\d,]*)?\.?\d+)")
_GSM8K_ENDING = re.compile(r"####\s*\$?\s*-?[\d,]*\.?\d+\s*\.?\s*$")
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?<=\d)(?:/\d+)?")
_MARKUP = re.compile(r"[\\$^_{}]")
_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")
_TEXT_ONLY_LATEX = re.compile(
    r"\s*\\(?:text|textbf|textrm|mbox|mathrm)\s*\{([^{}]*[A-Za-z][^{}]*)\}\s*\.?\s*"
)
_WORD = re.compile(r"[A-Za-z]{2,}")
# LaTeX that is not prose: commands, environment names, and the units in \text{ cm} / \mbox{ inches}.
_LATEX_WORDS = re.compile(r"\\(?:begin|end|text|textrm|mbox|mathrm|operatorname)\s*\{[^{}]*\}|\\[a-zA-Z]+")
_SENTENCE_END = re.compile(r"(?<=\d)\.(?=\s|$)")
# Words that are mathematics, not prose, in a plain-text gold or answer ("sqrt(2)", "2 pi").
_MATH_WORDS = frozenset(
    "sqrt pi sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp inf infty oo "
    "mod gcd lcm max min abs frac dfrac tfrac cup cap in le ge pm".split()
)

_GOLD_LATEX = [LatexExtractionConfig()]
_GOLD_EXPR = [LatexExtractionConfig(), ExprExtractionConfig()]
# Boxed answers outrank "the answer is X", which outranks the last expression.
_RESPONSE = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


@dataclass(frozen=True)
class MathVerdict:
    """The verifier's answer for one row: `correct` is None when the gold answer cannot be checked."""

    correct: Optional[bool]
    detail: str


@dataclass(frozen=True)
class _Gold:
    """A gold answer read once: its kind and what the response is compared with."""

    kind: str  # gsm8k | latex | number | ratio | text | unparseable
    shown: str = ""  # the gold as the verdict's detail prints it
    target: tuple[Any, ...] = ()  # math-verify's parse (gsm8k, latex, single number)
    numbers: tuple[Fraction, ...] = ()  # a multi-part word-problem gold ("6 cm; 15 cm")
    reason: str = ""  # why an unparseable gold cannot be parsed


def _leading_number(text: str) -> Optional[str]:
    match = _LEADING_NUMBER.match(text)
    if not match or not re.search(r"\d", match.group(1)):
        return None
    return match.group(1).replace(",", "").replace(" ", "")


def _unit_number(part: str) -> Optional[str]:
    """The number of a word-problem answer ("9 apples", "2.5 (m)", "6th"); None if more than units follow."""
    match = _LEADING_NUMBER.match(part)
    number = _leading_number(part)
    if number is None or not _UNIT_REST.fullmatch(part[match.end() :]):
        return None
    return number


def _gsm8k_number(text: str) -> Optional[str]:
    """The number after the last `####` ("#### 1,600" -> "1600", "#### 36.0" -> "36"), or None."""
    match = _GSM8K_NUMBER.match(text.rsplit("####", 1)[1])
    if not match:
        return None
    number = match.group(1).replace(",", "")
    return number.split(".")[0] if re.fullmatch(r"-?\d+\.0*", number) else number


def _is_prose(text: str) -> bool:
    """Words that are not mathematics: "Mrs. Hilt", "They are equal" (but not "sqrt(2)", "p - q" or LaTeX)."""
    text = _LATEX_WORDS.sub(" ", text)
    return any(word.lower() not in _MATH_WORDS for word in _WORD.findall(text))


def _normalize_text(text: str) -> str:
    text = re.sub(r"\\[a-zA-Z]+", " ", text)  # \text{Evelyn} -> Evelyn
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9: ]", "", re.sub(r"\s+", " ", text.lower()))).strip()


def _parse_latex(text: str) -> list:
    """math-verify's parse of a gold-like answer; bare LaTeX/expressions are wrapped in `$...$` first."""
    if not _DELIMITED.search(text):
        text = f"${text}$"
    return parse(text, _GOLD_LATEX, fallback_mode="no_fallback")


def _as_number(text: str) -> Fraction:
    """Exact value of "1,200", "2.5" or "7/9", so that 0.5 and 1/2 compare equal."""
    return Fraction(text.replace(",", ""))


@lru_cache(maxsize=4096)
def _read_gold(gold: str) -> _Gold:
    """Classify and parse a gold answer (cached: the same gold is checked against many responses)."""
    gold = gold.strip()
    if not gold:
        return _Gold("unparseable", reason="the gold answer is empty")
    if "####" in gold:
        number = _gsm8k_number(gold)
        if number is None:
            return _Gold("unparseable", reason="no number after the last '####'")
        target = parse(number, _GOLD_EXPR, fallback_mode="no_fallback")
        if not target:
            return _Gold("unparseable", reason=f"math-verify cannot parse {number!r}")
        return _Gold("gsm8k", shown=number, target=tuple(target))
    text_only = _TEXT_ONLY_LATEX.fullmatch(gold)
    if text_only:  # MATH's \text{Evelyn}, \text{(C)}: a text answer in LaTeX clothing
        return _Gold("text", shown=text_only.group(1).strip())
    if _COLON_PAIR.match(gold):  # ratio or clock time
        return _Gold("ratio", shown=gold)
    if not _MARKUP.search(gold):
        parts = [part.strip() for part in gold.split(";")]
        numbers = [_unit_number(part) for part in parts]
        if all(number is not None for number in numbers):
            if len(numbers) > 1:
                return _Gold("number", shown="; ".join(numbers), numbers=tuple(map(_as_number, numbers)))
            target = parse(numbers[0], _GOLD_EXPR, fallback_mode="no_fallback")
            if not target:
                return _Gold("unparseable", reason=f"math-verify cannot parse {numbers[0]!r}")
            return _Gold("number", shown=numbers[0], target=tuple(target))
        if _is_prose(gold):
            return _Gold("text", shown=gold)
    target = _parse_latex(gold)
    if not target:
        return _Gold("unparseable", reason="math-verify finds no expression it can parse in it")
    return _Gold("latex", shown=gold, target=tuple(target))


def gold_kind(gold: str) -> str:
    """How a gold answer is read: "gsm8k", "latex", "number", "ratio", "text" or "unparseable"."""
    return _read_gold(str(gold or "")).kind


def gold_number(gold: str) -> Optional[str]:
    """The number a numeric gold answer holds, or None for LaTeX, ratio, text and unparseable golds.

    GSM8K: the number after the last `####` ("... #### 1,200" -> "1200"). Word problems: the leading
    number ("15 balls" -> "15", "1,200 (dollars)" -> "1200"; the first one of "6 cm; 15 cm", and None
    for "11; 12; 13") -- exactly as before, since the ASDiv held-out split is chosen with it.
    """
    read = _read_gold(str(gold or ""))
    if read.kind == "gsm8k":
        return read.shown
    if read.kind == "number":
        return _leading_number(str(gold).strip())
    return None


def _last_boxed(text: str) -> Optional[str]:
    """The content of the last \\boxed{...} (braces balanced), or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    start = text.index("{", start) + 1
    depth = 1
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start:end]
    return None


def _final_answer(response: str) -> list:
    """The response's final answer as math-verify parses it (empty when there is none)."""
    if _GSM8K_ENDING.search(response):  # a GSM8K-style worked answer ("... #### 72"), not a "#### 2." heading
        return parse(_gsm8k_number(response), _GOLD_EXPR)
    if not _DELIMITED.search(response) and response.strip() and not _is_prose(response):
        bare = _parse_latex(response.strip())  # the response is just an answer: "\frac{3}{4}", "3, 5, 7"
        if bare:
            return bare + [response.strip()]
    # A full stop after a number ends the sentence: math-verify would read "is 7/9." as 7/(9.0).
    return parse(_SENTENCE_END.sub("", response), _RESPONSE)


def _shown(predicted: list) -> str:
    return str(predicted[-1] if isinstance(predicted[-1], str) else predicted[0])


def _check_numbers(response: str, gold: _Gold) -> MathVerdict:
    """A multi-part gold: the response's last numbers (in its last box, if any) are the gold's numbers."""
    where = _last_boxed(response) or response
    found = [_as_number(n) for n in _NUMBER.findall(where)][-len(gold.numbers) :]
    if len(found) < len(gold.numbers):
        return MathVerdict(False, f"found {len(found)} numbers, gold has {len(gold.numbers)} ({gold.shown})")
    correct = sorted(found) == sorted(gold.numbers)
    return MathVerdict(correct, f"answers {'; '.join(map(str, found))} vs gold {gold.shown}")


def _check_ratio(response: str, gold: str) -> MathVerdict:
    wanted = _COLON_PAIR.match(gold).groups()
    found = _COLON_PAIR.findall(response)
    if not found:
        return MathVerdict(False, f"no a:b answer found (gold {gold!r})")
    got = found[-1]
    same = [int(x) for x in got] == [int(x) for x in wanted]
    return MathVerdict(same, f"ratio/time {':'.join(got)} vs gold {gold!r}")


def _check_text(response: str, gold: str) -> MathVerdict:
    """Text golds: the gold's words, as whole words, in the boxed answer if there is one, else anywhere."""
    wanted = _normalize_text(gold)
    if not wanted:
        return MathVerdict(None, f"gold {gold!r} has no comparable text")
    boxed = _last_boxed(response)
    where = _normalize_text(boxed if boxed is not None else response)
    correct = re.search(rf"(?<![a-z0-9]){re.escape(wanted)}(?![a-z0-9])", where) is not None
    return MathVerdict(correct, f"text answer {'found' if correct else 'not found'}: {gold!r}")


def check_math_answer(response: str, gold: str) -> MathVerdict:
    """Compare the response's final answer with the gold answer (numeric/symbolic via math-verify)."""
    if gold is None or not str(gold).strip():
        return MathVerdict(None, "no gold answer to compare with")
    gold = str(gold).strip()
    read = _read_gold(gold)
    response = response or ""
    if read.kind == "unparseable":
        return MathVerdict(None, f"gold {gold!r} cannot be parsed: {read.reason}")
    if read.kind == "ratio":
        return _check_ratio(response, gold)
    if read.kind == "text":
        return _check_text(response, read.shown)
    if read.numbers:
        return _check_numbers(response, read)
    predicted = _final_answer(response)
    if not predicted:
        return MathVerdict(False, f"no final answer found (gold {read.shown})")
    correct = bool(verify(list(read.target), predicted))
    return MathVerdict(correct, f"answer {_shown(predicted)} vs gold {read.shown}")
