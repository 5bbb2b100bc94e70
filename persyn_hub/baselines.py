"""Baselines: SFT data sets built from the SAME labeled pool, so every strategy is compared fairly.

The labeled pool has one row per (prompt_id, teacher): every teacher answered every prompt. Each
strategy picks at most one row per prompt and turns it into an SFT row (`messages` = prompt turns +
the picked `response` as the assistant turn, `prompt_id`, `teacher`, `answer` when present), and
reports what generating that data would have cost:

| strategy | picks, per prompt | pays for |
| --- | --- | --- |
| `best_single` | the teacher with the highest mean `quality` over the pool | 1 generation / prompt |
| `random` | a teacher drawn uniformly, seeded by (seed, prompt_id) | 1 generation / prompt |
| `fixed_mix` | round robin: prompts sorted by id, i-th prompt -> teachers[i % K] | 1 generation / prompt |
| `gts_quality` | Generate-then-Select: highest `quality` | K generations / prompt |
| `gts_learnability` | Generate-then-Select: highest `learnability` | K generations / prompt |
| `gts_reward` | Generate-then-Select: highest combined `reward` (the router's oracle) | K generations / prompt |
| `persyn` | the router's teacher (`teacher` column of the routed prompts) | 1 / prompt + labeling |

Rules, all deterministic:
- Teacher order is the sorted teacher names (unless `teachers=` is given); every tie is broken by it
  (the earliest teacher in that order wins), so a re-run picks the same rows.
- A row is usable when `error` is None and `response` is non-empty. Strategies that fix the teacher
  before generating (single, random, mix, persyn) drop a prompt whose picked row failed; its cost is
  still paid. Selection strategies choose among usable rows with a score (`gts_reward` also skips rows
  with an `excluded` reason); a prompt with none is dropped.
- Cost = requests and tokens (`num_prompt_tokens + num_tokens`) of the rows a strategy pays for;
  PerSyn also pays the router's labeling cost: `labeling_requests`/`labeling_tokens`, passed in by
  the caller (every teacher on the labeled subset), reported separately so it can be amortized.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
from datasets import Dataset

from persyn_hub.errors import PersynError

STRATEGIES = (
    "best_single",
    "random",
    "fixed_mix",
    "gts_quality",
    "gts_learnability",
    "gts_reward",
    "persyn",
)
POOL_COLUMNS = ("prompt_id", "messages", "teacher", "response", "error")
SCORE_COLUMN = {"gts_quality": "quality", "gts_learnability": "learnability", "gts_reward": "reward"}


class BaselineError(PersynError, ValueError):
    """The pool or the routing table cannot support the asked strategy; the message says why."""


@dataclass
class GenerationCost:
    """What producing a strategy's data costs, in teacher requests and tokens (prompt + response)."""

    requests: int = 0
    tokens: int = 0
    labeling_requests: int = 0
    labeling_tokens: int = 0

    @property
    def total_requests(self) -> int:
        return self.requests + self.labeling_requests

    @property
    def total_tokens(self) -> int:
        return self.tokens + self.labeling_tokens

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_requests": self.total_requests, "total_tokens": self.total_tokens}


@dataclass
class Baseline:
    """A strategy's SFT-ready data set and its generation cost."""

    strategy: str
    dataset: Dataset
    cost: GenerationCost
    teacher_counts: dict[str, int]


def _check_pool(pool: Dataset, extra: tuple[str, ...] = ()) -> None:
    missing = [c for c in (*POOL_COLUMNS, *extra) if c not in pool.column_names]
    if missing:
        raise BaselineError(
            f"labeled pool: missing column(s) {missing}; it has {pool.column_names}. Pass the pipeline's "
            "artifacts/labels (one row per prompt_id x teacher, after learnability/quality/combine)."
        )
    if len(pool) == 0:
        raise BaselineError("labeled pool: no rows.")


def _column(pool: Dataset, name: str) -> list:
    """A whole column as a list; goes through `select_columns` so an indices mapping is honoured."""
    return pool.select_columns([name]).flatten_indices().data.column(name).to_pylist()


def _grid(pool: Dataset, teachers: Optional[list[str]]) -> tuple[list[str], list[str], np.ndarray]:
    """(prompt ids sorted, teacher order, [prompt, teacher] -> pool row index or -1)."""
    prompt_ids = _column(pool, "prompt_id")
    row_teachers = _column(pool, "teacher")
    order = list(teachers) if teachers is not None else sorted(set(row_teachers))
    unknown = sorted(set(row_teachers) - set(order))
    if unknown:
        raise BaselineError(f"teachers: pool has teacher(s) {unknown} not in the given order {order}.")
    prompts = sorted(set(prompt_ids))
    p_index = {p: i for i, p in enumerate(prompts)}
    t_index = {t: i for i, t in enumerate(order)}
    grid = np.full((len(prompts), len(order)), -1, dtype=np.int64)
    for row, (p, t) in enumerate(zip(prompt_ids, row_teachers)):
        if grid[p_index[p], t_index[t]] != -1:
            raise BaselineError(f"labeled pool: prompt {p!r} has two rows for teacher {t!r}; deduplicate it.")
        grid[p_index[p], t_index[t]] = row
    return prompts, order, grid


def _usable(pool: Dataset) -> np.ndarray:
    errors = _column(pool, "error")
    responses = _column(pool, "response")
    return np.array([e is None and bool(r and r.strip()) for e, r in zip(errors, responses)], dtype=bool)


def _row_cost(pool: Dataset) -> np.ndarray:
    tokens = np.zeros(len(pool), dtype=np.int64)
    for name in ("num_prompt_tokens", "num_tokens"):
        if name in pool.column_names:
            tokens += np.array([v or 0 for v in _column(pool, name)], dtype=np.int64)
    return tokens


def _to_sft(batch: dict[str, list]) -> dict[str, list]:
    return {
        "messages": [
            list(prompt) + [{"role": "assistant", "content": response}]
            for prompt, response in zip(batch["messages"], batch["response"])
        ]
    }


def _finish(
    strategy: str, pool: Dataset, picked: list[int], paid: np.ndarray, labeling: tuple[int, int]
) -> Baseline:
    keep = [c for c in ("prompt_id", "messages", "teacher", "response", "answer") if c in pool.column_names]
    chosen = pool.select(picked).select_columns(keep)
    dataset = chosen.map(_to_sft, batched=True, remove_columns=["response"], desc=f"Building {strategy}")
    dataset = dataset.flatten_indices()
    costs = _row_cost(pool)
    paid_rows = paid[paid >= 0]
    cost = GenerationCost(
        requests=int(len(paid_rows)),
        tokens=int(costs[paid_rows].sum()) if len(paid_rows) else 0,
        labeling_requests=labeling[0],
        labeling_tokens=labeling[1],
    )
    counts: dict[str, int] = {}
    for teacher in dataset["teacher"]:
        counts[teacher] = counts.get(teacher, 0) + 1
    return Baseline(strategy, dataset, cost, dict(sorted(counts.items())))


def _fixed_choice(strategy: str, pool: Dataset, choice: np.ndarray, grid: np.ndarray) -> Baseline:
    """One teacher fixed per prompt before generation: pay for it, keep it only when it succeeded."""
    rows = grid[np.arange(len(grid)), choice]
    usable = _usable(pool)
    picked = [int(r) for r in rows if r >= 0 and usable[r]]
    return _finish(strategy, pool, picked, rows, (0, 0))


def _mean_quality(pool: Dataset, order: list[str]) -> dict[str, float]:
    quality = _column(pool, "quality")
    teachers = _column(pool, "teacher")
    means = {}
    for name in order:
        values = [q for q, t in zip(quality, teachers) if t == name and q is not None and not np.isnan(q)]
        means[name] = float(np.mean(values)) if values else float("-inf")
    return means


def best_single_teacher(pool: Dataset, teachers: Optional[list[str]] = None) -> Baseline:
    """Every prompt to the teacher with the highest mean `quality` over the pool (ties: teacher order)."""
    _check_pool(pool, ("quality",))
    _, order, grid = _grid(pool, teachers)
    means = _mean_quality(pool, order)
    best = max(range(len(order)), key=lambda i: (means[order[i]], -i))
    return _fixed_choice("best_single", pool, np.full(len(grid), best), grid)


def random_teacher(pool: Dataset, seed: int = 42, teachers: Optional[list[str]] = None) -> Baseline:
    """A uniformly drawn teacher per prompt; the draw hashes (seed, prompt_id), so it ignores row order."""
    _check_pool(pool)
    prompts, order, grid = _grid(pool, teachers)
    draws = [
        int(hashlib.sha256(f"{seed}\x1f{p}".encode()).hexdigest()[:12], 16) % len(order) for p in prompts
    ]
    return _fixed_choice("random", pool, np.array(draws, dtype=np.int64), grid)


def fixed_mix(pool: Dataset, teachers: Optional[list[str]] = None) -> Baseline:
    """Equal shares, round robin: the i-th prompt (sorted by prompt_id) goes to teachers[i % K]."""
    _check_pool(pool)
    _, order, grid = _grid(pool, teachers)
    return _fixed_choice("fixed_mix", pool, np.arange(len(grid)) % len(order), grid)


def generate_then_select(pool: Dataset, by: str = "reward", teachers: Optional[list[str]] = None) -> Baseline:
    """All K teachers answer every prompt; keep the usable row with the highest `by` score.

    `by` is `quality`, `learnability` or `reward`. Ties go to the earliest teacher in the order.
    """
    strategy = {v: k for k, v in SCORE_COLUMN.items()}.get(by)
    if strategy is None:
        raise BaselineError(f"generate_then_select: by={by!r}; choose quality, learnability or reward.")
    _check_pool(pool, (by,))
    _, _, grid = _grid(pool, teachers)
    scores = np.array([np.nan if v is None else float(v) for v in _column(pool, by)], dtype=np.float64)
    ok = _usable(pool) & ~np.isnan(scores)
    if by == "reward" and "excluded" in pool.column_names:
        ok &= np.array([e is None for e in _column(pool, "excluded")], dtype=bool)
    picked = []
    for rows in grid:
        candidates = [(scores[r], -i, r) for i, r in enumerate(rows) if r >= 0 and ok[r]]
        if candidates:
            picked.append(int(max(candidates)[2]))
    return _finish(strategy, pool, picked, grid.reshape(-1), (0, 0))


def persyn_routed(
    pool: Dataset,
    routing: Dataset | dict[str, str],
    teachers: Optional[list[str]] = None,
    labeling_cost: tuple[int, int] = (0, 0),
) -> Baseline:
    """The router's choice per prompt (`routing`: rows with prompt_id + teacher, or a dict id -> teacher).

    `labeling_cost` = (requests, tokens) spent labeling the router's training subset. When it is given, the
    pool IS that labeled subset: every routed answer was already paid for while labeling, so PerSyn's cost
    is the labeling's and nothing more (at scale it is N_labeled x K + the routed rest, as `persyn run`
    reports). Without it, each routed row is charged like a fixed-choice strategy's.
    """
    _check_pool(pool)
    prompts, order, grid = _grid(pool, teachers)
    if isinstance(routing, Dataset):
        for column in ("prompt_id", "teacher"):
            if column not in routing.column_names:
                raise BaselineError(
                    f"routing: missing column {column!r}; pass the routed prompts (artifacts/routing)."
                )
        routing = dict(zip(_column(routing, "prompt_id"), _column(routing, "teacher")))
    missing = [p for p in prompts if p not in routing]
    if missing:
        raise BaselineError(
            f"routing: no routed teacher for {len(missing)} pool prompt(s), e.g. {missing[:3]}."
        )
    unknown = sorted({routing[p] for p in prompts} - set(order))
    if unknown:
        raise BaselineError(f"routing: routed teacher(s) {unknown} are not in the pool's teachers {order}.")
    choice = np.array([order.index(routing[p]) for p in prompts], dtype=np.int64)
    baseline = _fixed_choice("persyn", pool, choice, grid)
    if labeling_cost[0]:
        baseline.cost.requests, baseline.cost.tokens = 0, 0
    baseline.cost.labeling_requests, baseline.cost.labeling_tokens = (
        int(labeling_cost[0]),
        int(labeling_cost[1]),
    )
    return baseline


def pool_cost(pool: Dataset) -> tuple[int, int]:
    """(requests, tokens) of generating the whole pool: the router's labeling cost."""
    _check_pool(pool)
    return len(pool), int(_row_cost(pool).sum())


def build_baseline(
    pool: Dataset,
    strategy: str,
    *,
    seed: int = 42,
    routing: Dataset | dict[str, str] | None = None,
    teachers: Optional[list[str]] = None,
    labeling_cost: tuple[int, int] = (0, 0),
) -> Baseline:
    """Dispatch by strategy name (see `STRATEGIES`).

    Reads the labeled pool `[prompt_id, messages, teacher, response, error, quality?, learnability?,
    reward?, excluded?, num_tokens?, num_prompt_tokens?, answer?]`; returns `Baseline(dataset=[prompt_id,
    messages, teacher, answer?], cost)`. Example:
    `build_baseline(load_from_disk("runs/x/artifacts/labels"), "gts_reward").dataset`.
    """
    if strategy == "best_single":
        return best_single_teacher(pool, teachers)
    if strategy == "random":
        return random_teacher(pool, seed, teachers)
    if strategy == "fixed_mix":
        return fixed_mix(pool, teachers)
    if strategy in SCORE_COLUMN:
        return generate_then_select(pool, SCORE_COLUMN[strategy], teachers)
    if strategy == "persyn":
        if routing is None:
            raise BaselineError("persyn: pass routing= (the routed prompts with their `teacher`).")
        return persyn_routed(pool, routing, teachers, labeling_cost)
    raise BaselineError(f"strategy {strategy!r} is unknown; choose from {list(STRATEGIES)}.")


def summarize(baseline: Baseline) -> dict[str, Any]:
    return {
        "strategy": baseline.strategy,
        "rows": len(baseline.dataset),
        "teacher_counts": baseline.teacher_counts,
        **baseline.cost.to_dict(),
    }
