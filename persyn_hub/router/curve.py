"""The router's learning curve: test-split reward recovered when trained on a share of the train prompts.

`train_router(labels, settings, task, output_dir=..., learning_curve=[0.25, 0.5, 1.0])` trains extra routers on nested, seeded subsets of the
train split (the same validation prompts for early stopping, the same test prompts for every number), so
the curve answers "would labeling more prompts help?": a curve still rising at 100% says label more, a
flat one says the labeled set is big enough for this pool. The full-size point is the run's own router.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

CURVE_FILE = "learning_curve.png"


def check_fractions(fractions: list[float]) -> list[float]:
    """Sorted, de-duplicated shares of the train prompts, each in (0, 1]."""
    for value in fractions:
        if not 0.0 < float(value) <= 1.0:
            raise ValueError(f"router.learning_curve: {value} is not a share of the train prompts in (0, 1].")
    return sorted({float(value) for value in fractions})


def subset_indices(num_train: int, fraction: float, seed: int) -> np.ndarray:
    """The first `round(fraction * num_train)` (at least 1) of one seeded permutation of the train
    prompts: the subsets are nested, so a larger share only adds prompts."""
    order = np.random.default_rng(seed).permutation(num_train)
    return np.sort(order[: max(1, round(fraction * num_train))])


def curve_point(
    fraction: float, num_prompts: int, metrics: dict[str, Any], labeled_answers: int | None = None
) -> dict[str, Any]:
    """One point of the curve from a router's test metrics (with their bootstrap intervals).
    `labeled_answers`: the answers its train and validation prompts cost (the curve in generations spent)."""
    intervals = metrics.get("intervals") or {}
    return {
        "fraction": fraction,
        "train_prompts": num_prompts,
        "labeled_answers": labeled_answers,
        "reward_recovered": metrics["reward_recovered"],
        "interval": intervals.get("reward_recovered"),
        "reward_recovered_best_single": metrics["reward_recovered_best_single"],
        "best_single_interval": intervals.get("reward_recovered_best_single"),
        "best_single_teacher": metrics.get("best_single_teacher"),
        "top1_agreement": metrics["top1_agreement"],
        "epochs_trained": metrics.get("epochs_trained"),
    }


def learning_curve_png(curve: list[dict[str, Any]], random_level: float | None = None) -> bytes:
    """Reward recovered (95% interval) against train prompts; PNG bytes, byte-identical for the same curve
    (the router folder's files are part of the stage cache's content digest)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.2), dpi=100)
    axis = figure.subplots()
    sizes = [point["train_prompts"] for point in curve]

    def draw(key: str, interval_key: str, label: str, style: str) -> None:
        values = [point[key] for point in curve]
        low = [v - (p[interval_key] or [v, v])[0] for v, p in zip(values, curve)]
        high = [(p[interval_key] or [v, v])[1] - v for v, p in zip(values, curve)]
        axis.errorbar(sizes, values, yerr=[low, high], fmt=style, capsize=3, label=label)

    draw("reward_recovered", "interval", "router", "o-")
    draw("reward_recovered_best_single", "best_single_interval", "best single teacher", "s--")
    if random_level is not None:
        axis.axhline(random_level, color="grey", linestyle=":", label="random teacher")
    return reward_png(figure, axis, "router train prompts", "Router learning curve (95% bootstrap intervals)")


def reward_png(figure: Any, axis: Any, xlabel: str, title: str) -> bytes:
    """Finish a reward-recovered plot (the oracle's 1.0 line, labels, legend) as PNG bytes, byte-identical
    for the same figure (no software or date in the file): the learning curve and `persyn plan-labeling`."""
    axis.axhline(1.0, color="black", linewidth=0.5)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("reward recovered (test)")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


__all__ = ["CURVE_FILE", "check_fractions", "curve_point", "learning_curve_png", "subset_indices"]
