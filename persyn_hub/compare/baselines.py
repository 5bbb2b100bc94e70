"""The paper's data strategies, as per-prompt teacher choices on the same training prompts.

Every strategy answers the SAME training prompts (prompts outside the router's labeled subset and
outside every evaluation set); it only differs in which teacher's answer each prompt gets:

| strategy | teacher per prompt | generations it needs |
| --- | --- | --- |
| `strong` | the strongest teacher (highest mean quality on the labeled prompts) for every prompt | N |
| `mix` | the strongest or the weakest teacher (lowest mean quality), a seeded coin per prompt | N |
| `family_strong` | the strongest teacher of the student's model family | N |
| `car` | ONE teacher for the whole set: the best mean combined reward on the router's TRAIN prompts (the router metrics' "best single teacher") | K x labeled + N |
| `random` | a teacher drawn uniformly, seeded by (seed, prompt_id) | N |
| `oracle` | Generate-then-Select by the combined reward: every teacher answers, the best is kept | K x N |
| `gts_quality` / `gts_learnability` | Generate-then-Select by one signal alone | K x N |
| `persyn` | the router's teacher: the routed data set `persyn run` published | K x labeled + N |

N is the number of training prompts, K the number of MODEL teachers (a reference teacher writes from
the data set and costs no generation). The picks are pure functions of the scored pool, so the test
suite pins each definition on a hand-built pool.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from datasets import Dataset

from persyn_hub.errors import PersynError
from persyn_hub.router.selection import select_best

STRATEGIES = (
    "strong",
    "mix",
    "family_strong",
    "car",
    "random",
    "oracle",
    "gts_quality",
    "gts_learnability",
    "persyn",
)
GTS = {"oracle": "reward", "gts_quality": "quality", "gts_learnability": "learnability"}
"""Generate-then-Select strategies and the score they select by."""


class BaselineError(PersynError, ValueError):
    """A strategy cannot be built from this pool; the message says why and what to change."""


def _column(dataset: Dataset, name: str) -> list:
    return dataset.select_columns([name]).flatten_indices().data.column(name).to_pylist()


def mean_quality(labels: Dataset, teachers: list[str]) -> dict[str, float]:
    """Mean `quality` per teacher over its scored labeled answers (unscored answers are left out)."""
    sums = dict.fromkeys(teachers, 0.0)
    counts = dict.fromkeys(teachers, 0)
    for teacher, quality in zip(_column(labels, "teacher"), _column(labels, "quality")):
        if teacher in sums and quality is not None and not np.isnan(quality):
            sums[teacher] += float(quality)
            counts[teacher] += 1
    return {t: (sums[t] / counts[t] if counts[t] else float("-inf")) for t in teachers}


def strongest(labels: Dataset, teachers: list[str]) -> str:
    """Highest mean quality on the labeled prompts; ties go to the earlier teacher in `teachers`."""
    means = mean_quality(labels, teachers)
    return max(teachers, key=lambda t: (means[t], -teachers.index(t)))


def weakest(labels: Dataset, teachers: list[str]) -> str:
    """Lowest mean quality on the labeled prompts; ties go to the later teacher in `teachers`."""
    means = mean_quality(labels, teachers)
    return min(teachers, key=lambda t: (means[t], -teachers.index(t)))


def car_teacher(labels: Dataset, teachers: list[str], train_ids: list[str]) -> str:
    """CAR: one teacher for the whole set, the best mean combined reward on the router's train prompts.

    The same definition as the router metrics' best single teacher (`best_single_teacher`), on the same
    prompts, so "the best single teacher" means one thing in the summary, the card and the comparison.
    """
    from persyn_hub.router.labels import pivot_rewards
    from persyn_hub.router.metrics import best_single_teacher

    table = pivot_rewards(labels, teachers)
    train = set(train_ids)
    keep = np.array([i for i, p in enumerate(table.prompt_ids) if p in train], dtype=np.int64)
    if keep.size == 0:
        raise BaselineError(
            "car: none of the router's train prompts is in the labeled pool; re-run the pipeline."
        )
    return teachers[best_single_teacher(table.subset(keep).rewards)]


def family_strongest(
    labels: Dataset, teachers: list[str], families: dict[str, str | None], student_family: str
) -> str:
    """The strongest teacher of the student's family (paper: Family-Strong)."""
    same = [t for t in teachers if families.get(t) == student_family]
    if not same:
        known = {t: f for t, f in families.items() if f}
        raise BaselineError(
            f"family_strong: no teacher of the student's family {student_family!r} (teacher families: {known}); "
            "set `family:` on the teachers (or student.family), or leave family_strong out of `strategies`."
        )
    return strongest(labels, same)


def _coin(seed: int, prompt_id: str, sides: int) -> int:
    return int(hashlib.sha256(f"{seed}\x1f{prompt_id}".encode()).hexdigest()[:12], 16) % sides


def strategy_picks(
    strategy: str,
    *,
    prompt_ids: list[str],
    pool: Dataset,
    labels: Dataset,
    teachers: list[str],
    seed: int,
    train_ids: list[str] | None = None,
    families: dict[str, str | None] | None = None,
    student_family: str | None = None,
    routed: dict[str, str] | None = None,
    strong: str | None = None,
    weak: str | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """(prompt_id -> teacher for every training prompt it can answer, what defined the choice).

    `pool`: every teacher's scored answer on the training prompts; `labels`: the labeled pool;
    `routed`: the router's choice per training prompt (persyn).
    """
    strong = strong or strongest(labels, teachers)
    if strategy == "strong":
        return dict.fromkeys(prompt_ids, strong), {"teacher": strong}
    if strategy == "mix":
        weak = weak or weakest(labels, teachers)
        pair = [strong, weak]
        return {p: pair[_coin(seed, p, 2)] for p in prompt_ids}, {"strong": strong, "weak": weak}
    if strategy == "family_strong":
        teacher = family_strongest(labels, teachers, families or {}, student_family or "")
        return dict.fromkeys(prompt_ids, teacher), {"teacher": teacher, "family": student_family}
    if strategy == "car":
        teacher = car_teacher(labels, teachers, train_ids or [])
        return dict.fromkeys(prompt_ids, teacher), {"teacher": teacher}
    if strategy == "random":
        return {p: teachers[_coin(seed, p, len(teachers))] for p in prompt_ids}, {}
    if strategy in GTS:
        best = select_best(pool, GTS[strategy], teachers)
        return {p: best[p] for p in prompt_ids if p in best}, {"by": GTS[strategy]}
    if strategy == "persyn":
        if routed is None:
            raise BaselineError("persyn: the routed data set is missing; run `persyn run` first.")
        return {p: routed[p] for p in prompt_ids if p in routed}, {}
    raise BaselineError(f"strategy {strategy!r} is unknown; choose from {list(STRATEGIES)}.")


__all__ = [
    "GTS",
    "STRATEGIES",
    "BaselineError",
    "car_teacher",
    "family_strongest",
    "mean_quality",
    "strategy_picks",
    "strongest",
    "weakest",
]
