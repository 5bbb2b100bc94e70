"""Router heads on one finished run's labels: the standard sequence-classification head against the mean
pooling of routers saved before 0.2 (`router.legacy.PersynRouter`), same splits, seeds and settings.

    persyn run recipes/demo/task-mix-smollm2.yaml
    python benchmarks/bench_router_head.py --run-dir runs/task-mix-smollm2 --seeds 0 1 2

A router on the Hub should load with transformers alone, which a standard `...ForSequenceClassification`
does and the mean-pooling router did not. This measures what that costs in routing: per seed (each seed
draws its own train/validation/test split and head initialisation), the test reward recovered of both heads
with its 95% bootstrap interval, then the mean over seeds of the paired difference. The run's recipe
(`recipe.yaml` in the run folder) gives the router settings; the labels are its `combine` stage.
Last line: `reward_recovered_standard=X reward_recovered_mean_pooling=Y difference=Z`.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from persyn_hub.folders import load_dataset_folder
from persyn_hub.recipe.config import load_recipe
from persyn_hub.router.labels import pivot_rewards, split_by_prompt
from persyn_hub.router.modeling import new_router
from persyn_hub.router.training import RouterTask, fit_router, metrics_on_test_prompts


def mean_pooling_router(info, tokenizer):
    """The router as persyn_hub built it before 0.2: backbone + masked mean pooling + linear head."""
    from persyn_hub.router.legacy import PersynRouter

    return PersynRouter.from_encoder(info.backbone, info.teachers, max_length=info.max_length)


HEADS = {"standard": new_router, "mean_pooling": mean_pooling_router}


def measure(labels, recipe, seed: int) -> dict[str, dict]:
    task = dataclasses.replace(RouterTask.from_recipe(recipe), seed=seed)
    settings = recipe.router
    table = pivot_rewards(labels, task.teachers)
    splits = split_by_prompt(table, settings.validation_fraction, settings.test_fraction, seed)
    results = {}
    for name, build in HEADS.items():
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            router, tokenizer, _ = fit_router(
                splits.train, splits.validation, settings, task, Path(folder), build=build
            )
        metrics = metrics_on_test_prompts(router, tokenizer, splits.test, splits.train, settings, task)
        results[name] = {
            "reward_recovered": metrics["reward_recovered"],
            "interval": metrics["intervals"]["reward_recovered"],
            "top1": metrics["top1_agreement"],
            "best_single": metrics["reward_recovered_best_single"],
            "seconds": time.perf_counter() - started,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/task-mix-smollm2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    (combine,) = sorted((run_dir / "stages").glob("combine-*"))
    labels = load_dataset_folder(combine / "data")
    print(
        f"CPU capability: {torch.backends.cpu.get_cpu_capability()}; labels: {combine.name}, {len(labels)} rows"
    )
    print("| seed | head | reward recovered [95% CI] | top-1 | best single | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    totals = {name: [] for name in HEADS}
    for seed in args.seeds:
        for name, result in measure(labels, recipe, seed).items():
            low, high = result["interval"]
            totals[name].append(result["reward_recovered"])
            print(
                f"| {seed} | {name} | {result['reward_recovered']:.3f} [{low:.3f}, {high:.3f}] | {result['top1']:.3f} "
                f"| {result['best_single']:.3f} | {result['seconds']:.0f} |"
            )
    standard, mean_pooling = np.mean(totals["standard"]), np.mean(totals["mean_pooling"])
    differences = np.array(totals["standard"]) - np.array(totals["mean_pooling"])
    print(f"per-seed differences (standard - mean pooling): {np.round(differences, 3).tolist()}")
    print(
        f"reward_recovered_standard={standard:.3f} reward_recovered_mean_pooling={mean_pooling:.3f} "
        f"difference={standard - mean_pooling:+.3f}"
    )


if __name__ == "__main__":
    main()
