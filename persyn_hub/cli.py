"""The `persyn` command line: one subcommand per job, each with its own --help."""

from __future__ import annotations

import argparse
import json
import logging
import sys

DESCRIPTION = """\
PerSyn: personalized distillation data via router-guided multi-teacher distillation.

  persyn run recipes/demo/asdiv-smollm2.yaml                 run a recipe end to end
  persyn run RECIPE --labeling.alpha 0.7 --output.dir runs/x  override any recipe key
  persyn validate RECIPE                                      parse and print a recipe
  persyn route --router DIR_OR_REPO --prompts SOURCE --output DIR   route new prompts
  persyn sft --config recipes/demo/sft.yaml                  fine-tune the student (TRL SFTTrainer)
  persyn evaluate --model DIR --tasks persyn_asdiv --output DIR   lm-evaluation-harness
  persyn compare recipes/demo/compare-asdiv-smollm2.yaml      baselines vs PerSyn: table + chart
  persyn prepare                                              convert the bundled models once
"""


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    from persyn_hub.config import load_recipe
    from persyn_hub.pipeline import run_pipeline
    from persyn_hub.summary import format_summary

    recipe = load_recipe(args.recipe, extra)
    summary = run_pipeline(recipe)
    print(format_summary(summary))
    return 0


def _validate(args: argparse.Namespace, extra: list[str]) -> int:
    from persyn_hub.config import load_recipe

    recipe = load_recipe(args.recipe, extra)
    print(recipe.to_yaml())
    return 0


def _route(args: argparse.Namespace, extra: list[str]) -> int:
    """Route a new prompt set with a trained router; no teacher generates anything."""
    from persyn_hub.config import PromptsConfig, _apply_override, _build_dataclass, parse_overrides
    from persyn_hub.data import load_prompts
    from persyn_hub.preflight import open_router
    from persyn_hub.router import route_prompts

    values = {"source": args.prompts, "prompt_column": args.prompt_column, "split": args.split}
    values["num_prompts"] = args.num_prompts
    for key, value in parse_overrides(extra):  # any prompts setting: --drop_duplicates true, --id_column id
        _apply_override(values, key, value)
    prompt_config = _build_dataclass(PromptsConfig, values, "prompts")  # typed; unknown keys named
    teachers = args.teachers.split(",") if args.teachers else None
    router, tokenizer = open_router(args.router, teachers, field="--router")  # before any prompt loads
    prompts = load_prompts(prompt_config, seed=args.seed)
    budgets = json.loads(args.budgets) if args.budgets else None
    routed = route_prompts(prompts, router, tokenizer, budgets=budgets, batch_size=args.batch_size)
    routed.save_to_disk(args.output)
    counts: dict[str, int] = {}
    for teacher in routed["teacher"]:
        counts[teacher] = counts.get(teacher, 0) + 1
    print(json.dumps({"rows": len(routed), "teacher_counts": counts, "output": args.output}, indent=2))
    return 0


def _prepare(args: argparse.Namespace, extra: list[str]) -> int:
    from persyn_hub.bundled import BUNDLED_MODELS, PREFIX, resolve_model

    for name in BUNDLED_MODELS:
        print(f"{PREFIX}{name}: {resolve_model(PREFIX + name)}")
    return 0


def _delegate(module: str, function: str):
    """Subcommands implemented by other modules' `main(argv)` (SFT, evaluation, comparison)."""

    def run(args: argparse.Namespace, extra: list[str]) -> int:
        import importlib

        entry = getattr(importlib.import_module(module), function)
        return int(entry(args.arguments + extra) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persyn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run a recipe end to end (label, score, train the router, route, generate, assemble)",
        description="Run a PerSyn recipe. Any recipe key can be overridden after the recipe path, "
        "e.g. --labeling.alpha 0.7 --teachers.0.generation.max_new_tokens 32 --output.dir runs/x. "
        "Finished stages are reused from output.dir; an interrupted run resumes where it stopped.",
    )
    run.add_argument("recipe", help="recipe YAML file")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="parse a recipe (with overrides) and print it")
    validate.add_argument("recipe")
    validate.set_defaults(handler=_validate)

    route = commands.add_parser(
        "route", help="route a new prompt set with a trained router (local folder or Hub repo)"
    )
    route.add_argument("--router", required=True, help="router folder or Hub model repo id")
    route.add_argument("--prompts", required=True, help="bundled:NAME, a Hub data set id, or a local file")
    route.add_argument("--prompt-column", default="prompt")
    route.add_argument("--split", default="train")
    route.add_argument("--num-prompts", type=int, default=None)
    route.add_argument("--teachers", default=None, help="comma-separated teachers the router must have")
    route.add_argument("--budgets", default=None, help="JSON max share per teacher, e.g. '{\"a\": 0.3}'")
    route.add_argument("--batch-size", type=int, default=64)
    route.add_argument("--seed", type=int, default=42)
    route.add_argument("--output", required=True, help="where to save the routed data set")
    route.set_defaults(handler=_route)

    prepare = commands.add_parser("prepare", help="convert the bundled GGUF models to safetensors once")
    prepare.set_defaults(handler=_prepare)

    for name, module, function, text in (
        (
            "sft",
            "persyn_hub.sft",
            "main",
            "fine-tune the student with TRL (args as `python -m persyn_hub.sft`)",
        ),
        ("evaluate", "persyn_hub.evaluation", "main", "evaluate a model with lm-evaluation-harness"),
        ("compare", "persyn_hub.compare", "main", "build baselines, train and evaluate a student on each"),
    ):
        sub = commands.add_parser(name, help=text, add_help=False)
        sub.add_argument("arguments", nargs=argparse.REMAINDER)
        sub.set_defaults(handler=_delegate(module, function))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _configure_logging(args.verbose)
    from persyn_hub.config import RecipeError
    from persyn_hub.data import PromptDataError
    from persyn_hub.pipeline import RunLockedError
    from persyn_hub.preflight import PreflightError
    from persyn_hub.stage_cache import CorruptCacheError

    if extra and args.command not in ("run", "validate", "route", "sft", "evaluate", "compare"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.handler(args, extra)
    except (RecipeError, PromptDataError, PreflightError, RunLockedError, CorruptCacheError) as error:
        print(f"persyn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "persyn: interrupted; finished rows are checkpointed, run the same command to resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
