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
| `persyn_verified` | the router's teacher, or, when the checker rejects its answer, the router's next teacher (at most `fallback_on_incorrect` extra answers per prompt; none verified: the router's usable answer) | K x labeled + N + extra |

N is the number of training prompts, K the number of MODEL teachers (a reference teacher writes from
the data set and costs no generation). The picks are pure functions of the scored pool, so the test
suite pins each definition on a hand-built pool.

Every strategy ranks ALL teachers per prompt (`strategy_rankings`); its pick is the first teacher in its
own ranking whose answer is usable (`picking.choose_training_answers`, the one picking path), so an
unusable first choice falls back to the strategy's own next choice and never removes the prompt from the
other strategies:

| strategy | its ranking (first choice, then its fallbacks) |
| --- | --- |
| `strong`, `family_strong` | teachers by mean quality on the labeled prompts; ties: more scored labeled answers, then recipe order (`family_strong`: its family first) |
| `car` | teachers by mean combined reward on the router's train prompts; ties: recipe order |
| `mix` | the seeded coin's side, the other side, then the rest by mean quality |
| `random` | a seeded permutation of the teachers per prompt (its first element is the old single draw) |
| `oracle`, `gts_*` | teachers by their signal on that prompt (the same keys and ties as `select_best`) |
| `persyn` | the routed teacher, then the rest by the router's scores (`router_scores`) |
| `persyn_verified` | PerSyn's order; its pick is the first answer among the first 1 + `fallback_on_incorrect` that the checker fully accepts (`picking.verified_picks`), as `routing.fallback_on_incorrect` does in a run |
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from datasets import Dataset

from persyn_hub.errors import PersynError
from persyn_hub.scoring.answers import is_usable_answer

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
    "persyn_verified",
)
VERIFIED = {"persyn_verified"}
"""Strategies whose pick must also pass the checker (quality at full marks) within their extra answers."""
GTS = {"oracle": "reward", "gts_quality": "quality", "gts_learnability": "learnability"}
"""Generate-then-Select strategies and the score they select by."""


class BaselineError(PersynError, ValueError):
    """A strategy cannot be built from this pool; the message says why and what to change."""


def column(dataset: Dataset, name: str) -> list:
    """One column of `dataset` as a Python list (read through Arrow, without decoding the other columns)."""
    return dataset.select_columns([name]).flatten_indices().data.column(name).to_pylist()


def mean_quality(labels: Dataset, teachers: list[str]) -> dict[str, float]:
    """Mean `quality` per teacher over its scored labeled answers (unscored answers are left out)."""
    sums = dict.fromkeys(teachers, 0.0)
    counts = dict.fromkeys(teachers, 0)
    for teacher, quality in zip(column(labels, "teacher"), column(labels, "quality")):
        if teacher in sums and quality is not None and not np.isnan(quality):
            sums[teacher] += float(quality)
            counts[teacher] += 1
    return {t: (sums[t] / counts[t] if counts[t] else float("-inf")) for t in teachers}


def scored_answers(labels: Dataset, teachers: list[str]) -> dict[str, int]:
    """How many labeled answers of each teacher have a quality score (its coverage of the labeled prompts)."""
    counts = dict.fromkeys(teachers, 0)
    for teacher, quality in zip(column(labels, "teacher"), column(labels, "quality")):
        if teacher in counts and quality is not None and not np.isnan(quality):
            counts[teacher] += 1
    return counts


def quality_ranking(labels: Dataset, teachers: list[str]) -> list[str]:
    """Teachers, strongest first: by mean quality on the labeled prompts; TIES go to the teacher with more
    scored labeled answers (a teacher that answers fewer prompts is not stronger for it), then to the
    earlier teacher in `teachers`."""
    means = mean_quality(labels, teachers)
    answered = scored_answers(labels, teachers)
    return sorted(teachers, key=lambda t: (-means[t], -answered[t], teachers.index(t)))


def quality_ties(labels: Dataset, teachers: list[str], winner: str) -> list[str]:
    """The teachers whose mean quality equals `winner`'s (winner included, ranking order); [winner]: no tie."""
    means = mean_quality(labels, teachers)
    return [t for t in quality_ranking(labels, teachers) if np.isclose(means[t], means[winner])]


def strongest(labels: Dataset, teachers: list[str]) -> str:
    """Highest mean quality on the labeled prompts; ties go to the teacher with more scored labeled
    answers, then to the earlier teacher in `teachers` (`quality_ranking`)."""
    return quality_ranking(labels, teachers)[0]


def weakest(labels: Dataset, teachers: list[str]) -> str:
    """Lowest mean quality on the labeled prompts; ties go to the later teacher in `teachers`."""
    means = mean_quality(labels, teachers)
    return min(teachers, key=lambda t: (means[t], -teachers.index(t)))


def car_means(labels: Dataset, teachers: list[str], train_ids: list[str]) -> dict[str, float]:
    """Mean effective combined reward per teacher on the router's train prompts (what CAR ranks by)."""
    # lazy: router.labels loads pyarrow, which this module otherwise does not
    from persyn_hub.router.labels import pivot_rewards

    # lazy: router.metrics loads evaluate, which this module otherwise does not
    from persyn_hub.router.metrics import effective_rewards

    table = pivot_rewards(labels, teachers)
    train = set(train_ids)
    keep = np.array([i for i, p in enumerate(table.prompt_ids) if p in train], dtype=np.int64)
    if keep.size == 0:
        raise BaselineError(
            "car: none of the router's train prompts is in the labeled pool; re-run the pipeline."
        )
    means = effective_rewards(table.subset(keep).rewards).mean(axis=0)
    return {t: float(m) for t, m in zip(teachers, means)}


def car_ranking(labels: Dataset, teachers: list[str], train_ids: list[str]) -> list[str]:
    """Teachers by mean combined reward on the router's train prompts; ties: the earlier in `teachers`."""
    means = car_means(labels, teachers, train_ids)
    return sorted(teachers, key=lambda t: (-means[t], teachers.index(t)))


def car_teacher(labels: Dataset, teachers: list[str], train_ids: list[str]) -> str:
    """CAR: one teacher for the whole set, the best mean combined reward on the router's train prompts.

    The same definition as the router metrics' best single teacher (`best_single_teacher`: argmax, ties
    to the lowest index), on the same prompts, so "the best single teacher" means one thing in the
    summary, the card and the comparison.
    """
    return car_ranking(labels, teachers, train_ids)[0]


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


def _draw_order(seed: int, prompt_id: str, teachers: list[str]) -> list[str]:
    """`random`'s seeded sequence for one prompt: the single draw first, then the others in a seeded order."""
    first = teachers[_coin(seed, prompt_id, len(teachers))]
    rest = sorted(
        (t for t in teachers if t != first),
        key=lambda t: hashlib.sha256(f"{seed}\x1f{prompt_id}\x1f{t}".encode()).hexdigest(),
    )
    return [first, *rest]


def score_rankings(pool: Dataset, by: str, teachers: list[str]) -> dict[str, list[str]]:
    """prompt_id -> every teacher, best `by` score first, with `select_best`'s keys and ties (usable answers
    before unusable ones; for `reward`, an excluded or unscored answer ranks by `quality` after the scored
    ones; ties: the earlier teacher). The first element is `select_best`'s pick whenever it has one."""

    rank = {name: i for i, name in enumerate(teachers)}
    primary = [np.nan if v is None else float(v) for v in column(pool, by)]
    if by == "reward" and "excluded" in pool.column_names:
        primary = [np.nan if e is not None else v for v, e in zip(primary, column(pool, "excluded"))]
    fallback = (
        [np.nan if v is None else float(v) for v in column(pool, "quality")]
        if "quality" in pool.column_names
        else [np.nan] * len(pool)
    )
    usable = [is_usable_answer(r, e) for r, e in zip(column(pool, "response"), column(pool, "error"))]
    keys: dict[str, dict[str, tuple]] = {}
    for row, (prompt_id, teacher) in enumerate(zip(column(pool, "prompt_id"), column(pool, "teacher"))):
        if teacher not in rank:
            continue
        has_primary, has_fallback = not np.isnan(primary[row]), not np.isnan(fallback[row])
        keys.setdefault(prompt_id, {})[teacher] = (
            usable[row],
            usable[row] and has_primary,
            primary[row] if usable[row] and has_primary else -np.inf,
            usable[row] and has_fallback and not has_primary,
            fallback[row] if usable[row] and has_fallback and not has_primary else -np.inf,
        )
    missing = (False, False, -np.inf, False, -np.inf)
    return {
        prompt_id: sorted(teachers, key=lambda t: (*(-v for v in found.get(t, missing)), rank[t]))
        for prompt_id, found in keys.items()
    }


def strategy_rankings(
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
    router_scores: dict[str, dict[str, float]] | None = None,
    strong: str | None = None,
    weak: str | None = None,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """(prompt_id -> every teacher in the strategy's order of preference, what defined the order).

    `pool`: every teacher's scored answer on the training prompts; `labels`: the labeled pool;
    `routed`: the router's choice per training prompt, `router_scores`: its score per teacher (persyn).
    `defined_by["uses_labels"]` says whether the order was read from the labeled prompts (the strategy is
    then charged their labeling); single-teacher strategies report `ties` (the teachers level with their
    choice on its criterion, in the order the tie rule put them).
    """
    ranking = quality_ranking(labels, teachers)
    strong_from_labels = strong is None
    strong = strong or ranking[0]
    by_strength = [strong, *(t for t in ranking if t != strong)]
    if strategy == "strong":
        ties = quality_ties(labels, teachers, strong) if strong_from_labels else [strong]
        defined = {"teacher": strong, "ties": ties, "uses_labels": strong_from_labels}
        return dict.fromkeys(prompt_ids, by_strength), defined
    if strategy == "mix":
        weak_from_labels = weak is None
        weak = weak or weakest(labels, teachers)
        pair = [strong, weak]
        rest = [t for t in by_strength if t not in pair]
        order = {p: [pair[side], pair[1 - side], *rest] for p in prompt_ids for side in [_coin(seed, p, 2)]}
        defined = {"strong": strong, "weak": weak, "uses_labels": strong_from_labels or weak_from_labels}
        return order, defined
    if strategy == "family_strong":
        teacher = family_strongest(labels, teachers, families or {}, student_family or "")
        same = [t for t in ranking if (families or {}).get(t) == student_family]
        order = [*same, *(t for t in ranking if t not in same)]
        defined = {
            "teacher": teacher,
            "family": student_family,
            "ties": quality_ties(labels, same, teacher),
            "uses_labels": True,
        }
        return dict.fromkeys(prompt_ids, order), defined
    if strategy == "car":
        order = car_ranking(labels, teachers, train_ids or [])
        means = car_means(labels, teachers, train_ids or [])
        ties = [t for t in order if np.isclose(means[t], means[order[0]])]
        defined = {"teacher": order[0], "ties": ties, "uses_labels": True}
        return dict.fromkeys(prompt_ids, order), defined
    if strategy == "random":
        return {p: _draw_order(seed, p, teachers) for p in prompt_ids}, {"uses_labels": False}
    if strategy in GTS:
        ranked = score_rankings(pool, GTS[strategy], teachers)
        return {p: ranked[p] for p in prompt_ids if p in ranked}, {"by": GTS[strategy], "uses_labels": False}
    if strategy in ("persyn", "persyn_verified"):
        if routed is None:
            raise BaselineError("persyn: the routed data set is missing; run `persyn run` first.")
        scores = router_scores or {}
        order = {}
        for p in prompt_ids:
            if p not in routed:
                continue
            mine = scores.get(p, {})
            rest = sorted(
                (t for t in teachers if t != routed[p]),
                key=lambda t: (-mine.get(t, -np.inf), teachers.index(t)),
            )
            order[p] = [routed[p], *rest]
        return order, {"uses_labels": True}
    raise BaselineError(f"strategy {strategy!r} is unknown; choose from {list(STRATEGIES)}.")


__all__ = [
    "GTS",
    "STRATEGIES",
    "VERIFIED",
    "BaselineError",
    "car_means",
    "car_ranking",
    "car_teacher",
    "column",
    "family_strongest",
    "mean_quality",
    "quality_ranking",
    "quality_ties",
    "score_rankings",
    "scored_answers",
    "strategy_rankings",
    "strongest",
    "weakest",
]
