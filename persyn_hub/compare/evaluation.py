"""Evaluate a student with lm-evaluation-harness: the packaged persyn tasks or any standard task.

    persyn evaluate --model runs/x/student-sft --tasks persyn_asdiv --limit 20 --max-gen-toks 128 --output runs/x/eval
    python -m persyn_hub.compare.evaluation --model bundled:smollm2-135m-instruct --tasks persyn_asdiv,persyn_ifbench

The packaged tasks (`persyn_hub/eval_tasks/`, found with `TaskManager(include_path=...)`) read
held-out rows of the bundled data (split rule in `eval_tasks/heldout.py`), so they run offline.
GPU recipes name standard tasks (`gsm8k`, `minerva_math500`, `ifeval`), which lm-eval fetches from the
Hub. Results are written as `results.json` (lm-eval's results + configs) and `results.md` (a table).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

from persyn_hub.bundled import resolve_model
from persyn_hub.errors import PersynError
from persyn_hub.eval_tasks import TASK_NAMES, TASKS_DIR

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def task_manager(include_defaults: bool = True):
    """lm-eval's TaskManager with the packaged persyn tasks (plus the built-in ones when asked).

    Indexing lm-eval's thousands of built-in task YAMLs takes tens of seconds on a small CPU, so the
    manager is cached, and skipped entirely when only persyn tasks are asked for.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)


class EvaluationError(PersynError, ValueError):
    """The model or tasks to evaluate cannot be used; the message names the flag and the fix."""


def check_model(model: str, gguf_file: Optional[str] = None) -> str:
    """The loadable path or Hub id of `model` (`bundled:` resolved), or an `EvaluationError` naming it.

    lm-eval would otherwise fail deep inside `simple_evaluate` with a traceback (e.g. "Repo id must use
    alphanumeric chars" for a local path that does not exist)."""
    from transformers import AutoConfig

    try:
        resolved = resolve_model(str(model))
        if not gguf_file:
            AutoConfig.from_pretrained(resolved)
        elif not (Path(resolved) / gguf_file).is_file():
            raise FileNotFoundError(f"{gguf_file} is not in {resolved}")
    except PersynError:
        raise
    except Exception as error:  # noqa: BLE001 - every load failure gets the same one-line report
        looks_local = str(model).startswith(("/", "./", "../", "~")) or str(model).count("/") > 1
        fix = (
            "the local folder does not exist or holds no config.json; point --model at a saved model folder"
            if looks_local
            else "check the Hub id (and that you are logged in for gated models), or use a local folder or bundled:NAME"
        )
        raise EvaluationError(
            f"--model: cannot load {str(model)!r} ({type(error).__name__}: {str(error).splitlines()[0][:200]}); {fix}."
        ) from error
    return resolved


def check_tasks(tasks: list[str], limit: Optional[float] = None) -> None:
    """Every task is one lm-eval knows (or a task YAML file) and `limit` leaves items to evaluate, or one
    `EvaluationError` naming the flag; packaged names are checked without indexing lm-eval's own tasks."""
    import difflib

    if limit is not None and limit <= 0:
        raise EvaluationError(
            f"--limit: {limit:g} leaves no evaluation items; give a number of items per task (e.g. 20) or a "
            "fraction in (0, 1), or leave it out for all items."
        )
    packaged = [*TASK_NAMES, "persyn"]
    for name in tasks:
        if name.startswith("persyn") and name not in packaged and not Path(name).is_file():
            close = difflib.get_close_matches(name, packaged, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise EvaluationError(
                f"--tasks: {name!r} is not a packaged task ({', '.join(TASK_NAMES)}).{hint}"
            )
    if set(tasks) <= set(packaged):
        return
    known = task_manager(include_defaults=True).all_tasks
    for name in tasks:
        if name not in known and not Path(name).is_file():
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise EvaluationError(
                f"--tasks: {name!r} is neither an lm-eval task nor a task YAML file.{hint} List the tasks with "
                "`lm-eval ls tasks`."
            )


def _lm_eval_model(
    model: Any, dtype: str, gguf_file: Optional[str]
) -> tuple[Any, str, dict[str, Any] | None]:
    """(lm-eval's `model`, the report's label, lm-eval's `model_args`): an `LM` instance goes as is (no
    `model_args`); a name or path is checked and loaded by lm-eval's "hf" model."""
    from lm_eval.api.model import LM

    if isinstance(model, LM):
        return model, type(model).__name__, None
    model_args: dict[str, Any] = {"pretrained": check_model(str(model), gguf_file), "dtype": dtype}
    if gguf_file:
        model_args["gguf_file"] = gguf_file
    return "hf", str(model), model_args


def evaluate_model(
    model: Any,
    tasks: list[str],
    *,
    limit: Optional[float] = None,
    max_gen_toks: Optional[int] = None,
    batch_size: int | str = 8,
    dtype: str = "float32",
    device: Optional[str] = None,
    apply_chat_template: bool = True,
    system_instruction: Optional[str] = None,
    gguf_file: Optional[str] = None,
    output_dir: Optional[str | Path] = None,
    seed: int = 1234,
    per_item: bool = False,
) -> dict[str, Any]:
    """Run `lm_eval.simple_evaluate` and return `{"scores": [...], "results": ..., "configs": ...}`.

    `model`: a Hub id, a local folder, `bundled:NAME`, or an `lm_eval.api.model.LM` instance.
    `device` defaults to "cuda" when available, else "cpu" (lm-eval needs it said on CPU).
    With `gguf_file`, `model` is the folder holding it and no tokenizer is passed (lm-eval's rule).
    Writes `results.json` and `results.md` into `output_dir` when given. `per_item` adds `items`:
    {task: {metric: [value per eval item, in doc order]}}, what `persyn compare`'s intervals are computed from.
    """
    import torch
    from lm_eval import simple_evaluate

    if not tasks:
        raise EvaluationError("--tasks: empty; name at least one task, e.g. persyn_asdiv.")
    check_tasks(tasks, limit)  # before the model loads
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm, label, model_args = _lm_eval_model(model, dtype, gguf_file)
    gen_kwargs = {"max_gen_toks": int(max_gen_toks)} if max_gen_toks else None
    try:
        output = simple_evaluate(
            model=lm,
            model_args=model_args,
            tasks=list(tasks),
            batch_size=batch_size,
            device=device,
            limit=limit,
            task_manager=task_manager(include_defaults=not set(tasks) <= set(TASK_NAMES)),
            apply_chat_template=apply_chat_template,
            system_instruction=system_instruction,
            gen_kwargs=gen_kwargs,
            log_samples=per_item,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except ValueError as error:
        if "did not find any docs" not in str(error):
            raise
        raise EvaluationError(
            f"--tasks: {', '.join(tasks)}: a task has no evaluation items (limit {limit}); check --limit and "
            "the task's data (its test split, or the data files a task YAML names)."
        ) from None
    if output is None:  # non-zero ranks under accelerate
        return {}
    scores = score_rows(output["results"])
    report = {
        "model": label,
        "tasks": list(tasks),
        "limit": limit,
        "max_gen_toks": max_gen_toks,
        "scores": scores,
        "results": output["results"],
        "n_samples": output.get("n-samples"),
        "configs": output.get("configs"),
    }
    if per_item:
        report["items"] = item_scores(output.get("samples") or {}, scores)
    if output_dir is not None:
        write_results(report, Path(output_dir))
    return report


def item_scores(samples: dict[str, list[dict[str, Any]]], scores: list[dict[str, Any]]) -> dict[str, dict]:
    """lm-eval's logged samples -> {task: {metric: [per-item value by doc_id]}} for the reported metrics."""
    items: dict[str, dict[str, list[float]]] = {}
    for task, logged in samples.items():
        metrics = {row["metric"] for row in scores if row["task"] == task}
        ordered = sorted(logged, key=lambda sample: sample["doc_id"])
        items[task] = {
            metric: [float(sample[metric]) for sample in ordered]
            for metric in metrics
            if ordered and isinstance(ordered[0].get(metric), (int, float))
        }
    return items


def score_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """lm-eval's nested results -> flat rows {task, metric, filter, value, stderr}."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            if "," not in key or key.startswith("alias") or "_stderr" in key:
                continue
            metric, filter_name = key.split(",", 1)
            if not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filter_name,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
                }
            )
    return rows


def markdown_table(scores: list[dict[str, Any]]) -> str:
    lines = ["| task | metric | filter | value | stderr |", "| --- | --- | --- | --- | --- |"]
    for row in scores:
        stderr = "" if row["stderr"] is None else f"{row['stderr']:.4f}"
        lines.append(f"| {row['task']} | {row['metric']} | {row['filter']} | {row['value']:.4f} | {stderr} |")
    return "\n".join(lines) + "\n"


def write_results(report: dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (output_dir / "results.md").write_text(
        f"# Evaluation of `{report['model']}`\n\n" + markdown_table(report["scores"]), encoding="utf-8"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persyn evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hub id, local folder, or bundled:NAME")
    parser.add_argument("--tasks", default="persyn_asdiv", help="comma-separated lm-eval task names")
    parser.add_argument("--limit", type=float, default=None, help="rows per task (or a fraction < 1)")
    parser.add_argument("--max-gen-toks", type=int, default=None)
    parser.add_argument("--batch-size", default="8")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-chat-template", action="store_true", help="for base models")
    parser.add_argument("--system-instruction", default=None)
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--output", default=None, help="folder for results.json and results.md")
    parser.add_argument("--seed", type=int, default=1234)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    batch_size: int | str = int(args.batch_size) if args.batch_size.isdigit() else args.batch_size
    report = evaluate_model(
        args.model,
        [t.strip() for t in args.tasks.split(",") if t.strip()],
        limit=limit,
        max_gen_toks=args.max_gen_toks,
        batch_size=batch_size,
        dtype=args.dtype,
        device=args.device,
        apply_chat_template=not args.no_chat_template,
        system_instruction=args.system_instruction,
        gguf_file=args.gguf_file,
        output_dir=args.output,
        seed=args.seed,
    )
    print(markdown_table(report.get("scores", [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
