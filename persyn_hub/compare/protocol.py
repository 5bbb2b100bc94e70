"""What each strategy paid and what its student learned from: the comparison's cost and data columns.

Cost (`strategy_cost`), per strategy, over the common training prompts:
* `generations` / `tokens`: model answers the strategy needed (reference answers are free): the
  answers it tried in its own order up to its pick (a fallback pays for the unusable first choice too);
  Generate-then-Select pays every model teacher on every prompt; a strategy whose teacher order was read
  from the labeled prompts (`uses_labels`: strong, mix, family_strong and car when derived, persyn)
  also pays every model teacher on every labeled prompt (`labeling_generations`, included).
* `seconds`: the pipeline stages the strategy needed in order to choose, from the run's `summary.json`
  (`stages`): labeling generation and quality scoring (strong, mix, family_strong), plus learnability,
  combine (car), plus router training and routing (persyn); Generate-then-Select: every teacher's
  answers on the training prompts and their scoring. A stage reused from the cache counts the time it took
  when computed (kept in its marker); `cached_stages` lists those whose original time is unknown (markers
  from before it was kept), whose seconds are only the reload.

Training answers (`answer_stats`): the share the checker fully accepts (quality >= 1), mean quality,
mean response length in student tokens and mean student log-prob per token (learnability), read from
the scored pool row of each (prompt, picked teacher).
"""

from __future__ import annotations

from typing import Any

from persyn_hub.compare.baselines import GTS
from persyn_hub.scoring.answers import FULL_MARKS

LABEL_STAGES = {
    "strong": ("labeling", "label_quality"),
    "mix": ("labeling", "label_quality"),
    "family_strong": ("labeling", "label_quality"),
    "car": ("labeling", "label_learnability", "label_quality", "label_combine"),
    "persyn": (
        "labeling",
        "label_learnability",
        "label_quality",
        "label_combine",
        "router_training",
        "routing",
    ),
}
LABEL_STAGES["persyn_verified"] = LABEL_STAGES["persyn"]
POOL_STAGES = {
    "oracle": ("pool_generation", "pool_learnability", "pool_quality", "pool_combine"),
    "gts_quality": ("pool_generation", "pool_quality"),
    "gts_learnability": ("pool_generation", "pool_learnability"),
}


def stage_group(name: str, prefix: str = "compare/") -> str | None:
    """The cost group of a pipeline stage name (None: no strategy is charged for it)."""
    pool = name.startswith(prefix)
    rest = name[len(prefix) :] if pool else name
    side = "pool" if pool else "label"
    if rest.startswith("label-generate/"):
        return "pool_generation" if pool else "labeling"
    if rest in ("learnability", "quality", "combine"):
        return f"{side}_{rest}"
    if not pool and rest == "router":
        return "router_training"
    if not pool and rest == "route":
        return "routing"
    return None


def stage_seconds(stages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{group: {"seconds", "cached"}} from `summary["stages"]` (name, seconds, cached, computed_seconds).

    A reused stage counts the seconds it took when it was computed (`computed_seconds`, from its cache
    marker); `cached` flags a group with a reused stage whose original time is unknown (an older marker),
    whose seconds are then only the reload."""
    groups: dict[str, dict[str, Any]] = {}
    for stage in stages or []:
        group = stage_group(str(stage.get("name", "")))
        if group is None:
            continue
        entry = groups.setdefault(group, {"seconds": 0.0, "cached": False})
        computed = stage.get("computed_seconds")
        known = not stage.get("cached") or computed is not None
        entry["seconds"] += float(
            (computed if stage.get("cached") and known else stage.get("seconds")) or 0.0
        )
        entry["cached"] = entry["cached"] or not known
    return groups


def _tokens(row: dict[str, Any] | None) -> int:
    return int((row or {}).get("num_prompt_tokens") or 0) + int((row or {}).get("num_tokens") or 0)


def strategy_cost(
    strategy: str,
    *,
    asked: dict[str, list[str]],
    common: list[str],
    rows: dict[tuple[str, str], dict[str, Any]],
    label_rows: list[dict[str, Any]],
    free: set[str],
    teachers: list[str],
    uses_labels: bool,
    stages: list[dict[str, Any]],
) -> dict[str, Any]:
    """Generations, tokens and stage seconds one strategy needed for its training set on `common`."""
    if strategy in GTS:  # every model teacher answers every prompt
        paid = [rows.get((p, t)) for p in common for t in teachers if t not in free]
    else:  # the answers it asked for, in its own order, up to its pick
        paid = [rows.get((p, t)) for p in common for t in asked[p] if t not in free]
    cost: dict[str, Any] = {
        "generations": len(paid),
        "tokens": sum(_tokens(r) for r in paid),
        "labeling_generations": 0,
    }
    if uses_labels:
        labeled = [r for r in label_rows if r["teacher"] not in free]
        cost["labeling_generations"] = len(labeled)
        cost["generations"] += len(labeled)
        cost["tokens"] += sum(_tokens(r) for r in labeled)
    groups = stage_seconds(stages)
    needed = POOL_STAGES.get(strategy, ()) or (LABEL_STAGES.get(strategy, ()) if uses_labels else ())
    cost["seconds"] = round(sum(groups.get(g, {}).get("seconds", 0.0) for g in needed), 2)
    cost["seconds_by_stage"] = {g: round(groups[g]["seconds"], 2) for g in needed if g in groups}
    cost["cached_stages"] = [g for g in needed if groups.get(g, {}).get("cached")]
    return cost


def answer_stats(
    picks: dict[str, str], common: list[str], rows: dict[tuple[str, str], dict[str, Any]]
) -> dict[str, Any]:
    """What a student learned from: checker-accepted share, mean quality, length and student log-prob."""
    picked = [rows.get((p, picks[p])) or {} for p in common]

    def values(name: str) -> list[float]:
        return [float(r[name]) for r in picked if r.get(name) is not None]

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    quality = values("quality")
    lengths = values("num_response_tokens") or values("num_tokens")
    return {
        "verified_correct_share": round(sum(1 for q in quality if q >= FULL_MARKS) / len(picked), 4)
        if picked
        else None,
        "mean_quality": mean(quality),
        "mean_response_tokens": mean(lengths),
        "mean_student_logprob": mean(values("learnability")),
    }


__all__ = ["answer_stats", "stage_group", "stage_seconds", "strategy_cost"]
