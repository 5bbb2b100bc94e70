"""Routing: our batched router scoring vs a per-prompt loop, and our budget solver vs a MILP and greedy.

    python benchmarks/bench_routing.py --prompts 256 --solver-prompts 20000 --teachers 4 --threads 2

Routing: real ASDiv prompts through an (untrained: speed does not depend on training) MiniLM router,
once with `route_prompts` (length-sorted batches) and once one prompt per forward pass, the loop a
user would write first; both must give the same scores (to 1e-4).

Budgets: random scores of growing size with two capped teachers. Ours (`assign_with_budgets`: the LP
relaxation by dual simplex, integral because the constraint matrix is totally unimodular) against the
same problem handed to `scipy.optimize.milp`, and against greedy truncation (each prompt takes its best
teacher with room), whose lost score is printed as a share of the routing gain. The greedy baseline
takes prompts by regret, largest first (regret: best score minus second best, what a prompt loses by
moving off its best teacher), not in row order: row order is an arbitrary, weaker baseline (its loss is
printed beside, for reference), and the benchmark should beat the strongest simple heuristic.
Last line: `routing_speedup_vs_loop=X solver_speedup_vs_milp=Y greedy_loss=Z` (Z: by regret).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def milp_assignment(scores: np.ndarray, caps: np.ndarray) -> np.ndarray:
    from scipy import sparse
    from scipy.optimize import Bounds, LinearConstraint, milp

    n, k = scores.shape
    one_each = sparse.kron(sparse.identity(n, format="csr"), np.ones((1, k)), format="csr")
    per_teacher = sparse.kron(np.ones((1, n)), sparse.identity(k, format="csr"), format="csr")
    result = milp(
        -scores.ravel(),
        constraints=[
            LinearConstraint(one_each, 1.0, 1.0),
            LinearConstraint(per_teacher, 0.0, caps.astype(float)),
        ],
        integrality=np.ones(n * k),
        bounds=Bounds(0.0, 1.0),
    )
    return result.x.reshape(n, k).argmax(axis=1)


def greedy_by_regret(scores: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """`greedy_truncation` over prompts sorted by regret (best minus second-best score), largest first,
    so the prompts that lose most by leaving their best teacher claim its slots first."""
    from persyn_hub.router import greedy_truncation

    ranked = np.sort(scores, axis=1)
    regret = ranked[:, -1] - ranked[:, -2] if scores.shape[1] > 1 else np.zeros(len(scores))
    order = np.argsort(-regret, kind="stable")
    assignment = np.empty(len(scores), dtype=np.int64)
    assignment[order] = greedy_truncation(scores[order], caps)
    return assignment


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--solver-prompts", type=int, default=20000)
    parser.add_argument("--teachers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from persyn_hub.bundled import resolve_model
    from persyn_hub.data import load_prompts
    from persyn_hub.recipe.config import PromptsConfig
    from persyn_hub.router import (
        PersynRouter,
        assign_with_budgets,
        greedy_truncation,
        route_prompts,
        teacher_capacities,
    )

    teachers = [f"teacher-{k}" for k in range(args.teachers)]
    prompts = load_prompts(
        PromptsConfig(source="bundled:asdiv", num_prompts=args.prompts, drop_duplicates=True), seed=0
    )
    router = PersynRouter.from_encoder("bundled:minilm-l6-v2", teachers, max_length=args.max_length).eval()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("bundled:minilm-l6-v2"))
    route_prompts(prompts.select(range(8)), router, tokenizer, batch_size=args.batch_size)  # warm-up

    started = time.perf_counter()
    routed = route_prompts(prompts, router, tokenizer, batch_size=args.batch_size)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    with torch.inference_mode():
        loop = [
            router(**tokenizer(text, truncation=True, max_length=args.max_length, return_tensors="pt"))
            .logits[0]
            .tolist()
            for text in prompts["prompt"]
        ]
    naive = time.perf_counter() - started
    diff = float(np.abs(np.array(routed["router_scores"]) - np.array(loop)).max())
    print(f"routing {len(prompts)} prompts, {args.threads} threads, MiniLM-L6 router")
    print(f"  ours (batched)  {ours:6.2f} s  {len(prompts) / ours:7.1f} prompts/s")
    print(f"  per-prompt loop {naive:6.2f} s  {len(prompts) / naive:7.1f} prompts/s  max |diff| {diff:.1e}")
    if diff > 1e-4:
        raise SystemExit(f"the two disagree by {diff}")

    rng = np.random.default_rng(0)
    budgets = {teachers[0]: 0.1, teachers[1]: 0.2}
    print(f"budgeted assignment, {args.teachers} teachers, budgets {budgets}")
    for size in (1000, args.solver_prompts):
        scores = rng.normal(size=(size, args.teachers))
        caps = teacher_capacities(size, teachers, budgets)
        started = time.perf_counter()
        solved = assign_with_budgets(scores, teachers, budgets)
        lp_seconds = time.perf_counter() - started
        started = time.perf_counter()
        reference = milp_assignment(scores, caps)
        milp_seconds = time.perf_counter() - started
        greedy = greedy_by_regret(scores, caps)
        in_row_order = greedy_truncation(scores, caps)
        for name, a in (("greedy by regret", greedy), ("greedy in row order", in_row_order)):
            if (np.bincount(a, minlength=args.teachers) > caps).any() or len(a) != size:
                raise SystemExit(f"{name} broke the capacities {caps.tolist()}")
        value = {
            name: scores[np.arange(size), a].sum()
            for name, a in (("ours", solved), ("milp", reference), ("greedy", greedy), ("row", in_row_order))
        }
        if not np.isclose(value["ours"], value["milp"]):
            raise SystemExit(f"ours {value['ours']} != milp {value['milp']}")
        # scores are centred per prompt so the loss is a share of what routing can gain over a random teacher
        centred = value["ours"] - scores.mean(axis=1).sum()
        greedy_loss = (value["ours"] - value["greedy"]) / centred
        row_loss = (value["ours"] - value["row"]) / centred
        print(
            f"  {size:>6} prompts: ours {lp_seconds:6.3f} s, milp {milp_seconds:6.3f} s "
            f"({milp_seconds / lp_seconds:.1f}x), same optimum; greedy by regret loses {greedy_loss:.1%} "
            f"of the routing gain (in row order: {row_loss:.1%})"
        )
    print(
        f"routing_speedup_vs_loop={naive / ours:.2f} solver_speedup_vs_milp={milp_seconds / lp_seconds:.1f} "
        f"greedy_loss={greedy_loss:.3f}"
    )


if __name__ == "__main__":
    main()
