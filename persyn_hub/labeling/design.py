"""The labeling design: which teachers answer each labeled prompt.

Full labeling (the paper's) asks every teacher on every labeled prompt: K answers per prompt. A partial
design (`labeling.teachers_per_prompt: m`) asks m of them, chosen so that every pair of teachers is
compared about equally often over the labeled prompts: the Bradley-Terry router learns from pairs, and a
pair never asked together is one it can only order through others. For the same number of labeled answers
a partial design labels K/m times as many prompts, so the router sees more prompt texts.

The design is a deterministic function of (labeled prompt ids in order, teacher names, m, seed): every
process, a resumed run and `persyn plan-labeling` compute the same one. Teachers whose answers cost
nothing (`backend: reference`, answer-pool columns) are designed like the others, so a run asks exactly
what `persyn plan-labeling` simulates and the pair balance holds for every pair.

    >>> design = balanced_design(["p0", "p1", "p2"], ["a", "b", "c"], per_prompt=2, seed=0)
    >>> sorted(design.values())  # each prompt asked by two teachers, each pair once
    [('a', 'b'), ('a', 'c'), ('b', 'c')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np

FULL = "full"
BALANCED_PAIRS = "balanced_pairs"


def effective_per_prompt(per_prompt: int | None, num_teachers: int) -> int | None:
    """`labeling.teachers_per_prompt` as a design: None (full labeling) when unset or every teacher."""
    return None if per_prompt is None or per_prompt >= num_teachers else int(per_prompt)


def balanced_design(
    prompt_ids: Sequence[str], teachers: Sequence[str], per_prompt: int, seed: int
) -> dict[str, tuple[str, ...]]:
    """prompt id -> the `per_prompt` teachers that answer it (in `teachers` order), pairs balanced.

    Greedy over the prompts in their order: the least-asked teacher first, then one at a time the teacher
    compared least often with those already chosen (then the least asked), seeded random tie-breaks. The
    spread of the pair counts does not grow with the number of prompts: at most 1 for m = 2 (a cycle through
    the pairs), at most 5 for any m with up to 19 teachers (`tests/test_labeling_design.py`).
    """
    k = len(teachers)
    if not 2 <= per_prompt <= k:
        raise ValueError(
            f"labeling.teachers_per_prompt: {per_prompt} must be between 2 and {k} (the teachers)."
        )
    rng = np.random.default_rng(seed)
    pairs = np.zeros((k, k), dtype=np.int64)
    asked = np.zeros(k, dtype=np.int64)
    design: dict[str, tuple[str, ...]] = {}
    for prompt_id in prompt_ids:
        tiebreak = rng.random(k)
        chosen = [int(np.lexsort((tiebreak, asked))[0])]
        while len(chosen) < per_prompt:
            compared = pairs[:, chosen].sum(axis=1).astype(float)
            compared[chosen] = np.inf
            nxt = int(np.lexsort((tiebreak, asked, compared))[0])
            chosen.append(nxt)
        for a, b in combinations(chosen, 2):
            pairs[a, b] += 1
            pairs[b, a] += 1
        asked[chosen] += 1
        design[str(prompt_id)] = tuple(teachers[i] for i in sorted(chosen))
    return design


def full_design(prompt_ids: Sequence[str], teachers: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Every teacher on every prompt (the paper's labeling)."""
    return {str(prompt_id): tuple(teachers) for prompt_id in prompt_ids}


def make_design(
    prompt_ids: Sequence[str], teachers: Sequence[str], per_prompt: int | None, seed: int
) -> dict[str, tuple[str, ...]]:
    """The design a recipe asks for: full when `per_prompt` is None or every teacher, else balanced pairs."""
    m = effective_per_prompt(per_prompt, len(teachers))
    return full_design(prompt_ids, teachers) if m is None else balanced_design(prompt_ids, teachers, m, seed)


def prompts_of(design: Mapping[str, Sequence[str]], teacher: str) -> set[str]:
    """The prompt ids `teacher` answers under `design`."""
    return {prompt_id for prompt_id, asked in design.items() if teacher in asked}


def pair_counts(asked_per_prompt: Mapping[str, Sequence[str]], teachers: Sequence[str]) -> dict[str, int]:
    """Pair "a | b" -> prompts on which both a and b answered, for every pair in `teachers` order."""
    index = {name: i for i, name in enumerate(teachers)}
    counts = {(a, b): 0 for a, b in combinations(teachers, 2)}
    for asked in asked_per_prompt.values():
        ordered = sorted((t for t in asked if t in index), key=index.__getitem__)
        for a, b in combinations(ordered, 2):
            counts[(a, b)] += 1
    return {f"{a} | {b}": n for (a, b), n in counts.items()}


def describe_design(
    asked_per_prompt: Mapping[str, Sequence[str]], teachers: Sequence[str], per_prompt: int | None, seed: int
) -> dict[str, Any]:
    """What the summary and the router card say about a labeling: the design, its answers, its pairs."""
    m = effective_per_prompt(per_prompt, len(teachers))
    answers = sum(len(asked) for asked in asked_per_prompt.values())
    pairs = pair_counts(asked_per_prompt, teachers)
    per_teacher = {t: sum(1 for asked in asked_per_prompt.values() if t in asked) for t in teachers}
    return {
        "design": FULL if m is None else BALANCED_PAIRS,
        "teachers_per_prompt": len(teachers) if m is None else m,
        "seed": None if m is None else seed,
        "labeled_prompts": len(asked_per_prompt),
        "labeled_answers": answers,
        "full_labeling_answers": len(asked_per_prompt) * len(teachers),
        "answers_per_teacher": per_teacher,
        "pair_counts": pairs,
        "pair_count_range": [min(pairs.values()), max(pairs.values())] if pairs else [0, 0],
    }


__all__ = [
    "BALANCED_PAIRS",
    "FULL",
    "balanced_design",
    "describe_design",
    "effective_per_prompt",
    "full_design",
    "make_design",
    "pair_counts",
    "prompts_of",
]
