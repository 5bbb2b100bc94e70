"""Routing throughput and budget-solver cost.

    python benchmarks/bench_routing.py --prompts 256 --solver-prompts 20000 --teachers 4 --threads 2

Routes real ASDiv prompts with an (untrained) MiniLM router (speed does not depend on training), then
solves budgeted assignments of random scores of growing size. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    from persyn_hub.config import PromptsConfig
    from persyn_hub.data import load_prompts
    from persyn_hub.router import PersynRouter, assign_with_budgets, route_prompts

    teachers = [f"teacher-{k}" for k in range(args.teachers)]
    prompts = load_prompts(
        PromptsConfig(source="bundled:asdiv", num_prompts=args.prompts, drop_duplicates=True), seed=0
    )
    router = PersynRouter.from_encoder("bundled:minilm-l6-v2", teachers, max_length=args.max_length)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("bundled:minilm-l6-v2"))
    started = time.perf_counter()
    route_prompts(prompts, router, tokenizer, batch_size=args.batch_size)
    routing_seconds = time.perf_counter() - started

    rng = np.random.default_rng(0)
    budgets = {teachers[0]: 0.1, teachers[1]: 0.2}
    solver = []
    for size in (1000, args.solver_prompts):
        scores = rng.normal(size=(size, args.teachers))
        started = time.perf_counter()
        assignment = assign_with_budgets(scores, teachers, budgets)
        seconds = time.perf_counter() - started
        solver.append(
            {
                "prompts": size,
                "seconds": round(seconds, 3),
                "shares": np.bincount(assignment, minlength=args.teachers).tolist(),
            }
        )
    print(
        json.dumps(
            {
                "routing": {
                    "prompts": len(prompts),
                    "seconds": round(routing_seconds, 2),
                    "prompts_per_second": round(len(prompts) / routing_seconds, 1),
                    "threads": args.threads,
                },
                "budget_solver": solver,
                "budgets": budgets,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
