"""The `persyn` command line: one subcommand per job, each with its own --help."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from persyn_hub.bundled import BUNDLED_MODELS, PREFIX, resolve_model
from persyn_hub.errors import PersynError
from persyn_hub.publish.finished import publish_again
from persyn_hub.recipe.config import PromptsConfig, load_recipe
from persyn_hub.recipe.kinds import validate_file
from persyn_hub.recipe.migrate import migrate_file
from persyn_hub.recipe.parsing import apply_override, build_dataclass, parse_overrides
from persyn_hub.router.info import router_info

DESCRIPTION = """\
PerSyn: personalized distillation data via router-guided multi-teacher distillation.

  persyn run recipes/demo/task-mix-smollm2.yaml              run the default recipe end to end
  persyn run RECIPE --labeling.alpha 0.2 --output.dir runs/x  override any recipe key
  persyn validate RECIPE                                      check a pipeline, comparison or SFT recipe
  persyn migrate OLD.yaml -o NEW.yaml                         rewrite an older recipe format
  persyn route --router DIR_OR_REPO --prompts SOURCE --output DIR   route new prompts
  persyn sft --config recipes/demo/sft.yaml                  fine-tune the student (TRL SFTTrainer)
  persyn evaluate --model DIR --tasks persyn_asdiv --output DIR   lm-evaluation-harness
  persyn compare recipes/demo/compare-asdiv-smollm2.yaml      baselines vs PerSyn: table + chart
  persyn plan-labeling RECIPE --designs 2,3,full              labeling designs at equal spend, no generation
  persyn publish runs/x                                       publish a finished run again
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
    # lazy: pipeline.run loads datasets and numpy, which this module otherwise does not
    from persyn_hub.pipeline.run import run_pipeline

    # lazy: pipeline.summary loads datasets and numpy, which this module otherwise does not
    from persyn_hub.pipeline.summary import format_summary

    if getattr(args, "resume_from_hub", None):  # the same as --output.hub.resume_from REPO[@revision]
        extra = [*extra, "--output.hub.resume_from", args.resume_from_hub]
    recipe = load_recipe(args.recipe, extra)
    summary = run_pipeline(recipe, retry_failed=args.retry_failed, break_lock=args.break_lock)
    if "rows" in summary:  # the main process of a launch reports; the others only worked
        print(format_summary(summary))
    return 0


def _validate(args: argparse.Namespace, extra: list[str]) -> int:
    """Pipeline, comparison and SFT recipes, each checked by its own parser (`recipe/kinds.py`); a local
    prompt file is opened too, so a column the recipe names and the file lacks fails now."""

    print(validate_file(args.recipe, extra, kind=args.kind))
    return 0


def _route(args: argparse.Namespace, extra: list[str]) -> int:
    """Route a new prompt set with a trained router; no teacher generates anything."""
    # lazy: these load datasets, torch and transformers, which `persyn --help` and `validate` do not need
    from persyn_hub.data import load_prompts
    from persyn_hub.pipeline.preflight import open_router
    from persyn_hub.router.routing import route_prompts

    values = {"source": args.prompts, "prompt_column": args.prompt_column, "split": args.split}
    values["num_prompts"] = args.num_prompts
    for key, value in parse_overrides(extra):  # any prompts setting: --drop_duplicates true, --id_column id
        apply_override(values, key, value)
    prompt_config = build_dataclass(PromptsConfig, values, "prompts")  # typed; unknown keys named
    budgets = _parse_budgets(args.budgets)
    teachers = args.teachers.split(",") if args.teachers else None
    router, tokenizer = open_router(args.router, teachers, field="--router")  # before any prompt loads
    if budgets:
        # lazy: router.budgets loads numpy and scipy, which this module otherwise does not
        from persyn_hub.router.budgets import check_budgets

        check_budgets(budgets, router_info(router).teachers)  # a wrong name fails before prompts load
    prompts = load_prompts(prompt_config, seed=args.seed)
    routed = route_prompts(prompts, router, tokenizer, budgets=budgets, batch_size=args.batch_size)
    routed.save_to_disk(args.output)
    counts: dict[str, int] = {}
    for teacher in routed["teacher"]:
        counts[teacher] = counts.get(teacher, 0) + 1
    print(json.dumps({"rows": len(routed), "teacher_counts": counts, "output": args.output}, indent=2))
    return 0


BUDGETS_EXAMPLE = """--budgets '{"gemma-3-270m": 0.3}'"""


def _parse_budgets(text: str | None) -> dict[str, float] | None:
    """`--budgets` JSON -> {teacher: max share}; a typo is one BudgetError naming the flag, not a traceback."""
    if not text:
        return None
    # lazy: router.budgets loads numpy and scipy, which this module otherwise does not
    from persyn_hub.router.budgets import BudgetError

    try:
        budgets = json.loads(text)
    except json.JSONDecodeError as error:
        raise BudgetError(
            f"--budgets: {text!r} is not valid JSON ({error.msg} at character {error.pos}); give the max share "
            f"of prompts per teacher as a JSON object, e.g. {BUDGETS_EXAMPLE}."
        ) from None
    if not isinstance(budgets, dict):
        raise BudgetError(
            f"--budgets: {text!r} is not a JSON object; give the max share of prompts per teacher, "
            f"e.g. {BUDGETS_EXAMPLE}."
        )
    for name, share in budgets.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)):
            raise BudgetError(f"--budgets: {name}: {share!r} is not a number; e.g. {BUDGETS_EXAMPLE}.")
    return budgets


def _migrate(args: argparse.Namespace, extra: list[str]) -> int:
    """Rewrite an older recipe into the current format, saying every change (comments are not kept)."""

    text, changes = migrate_file(args.recipe)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text)
    for change in changes or ["already current; nothing to change"]:
        print(f"migrate: {change}", file=sys.stderr)
    return 0


def _publish(args: argparse.Namespace, extra: list[str]) -> int:
    """Publish a finished run again by itself: its saved recipe (overrides allowed) and summary."""

    summary = publish_again(args.output_dir, extra)
    print(json.dumps({key: value for key, value in summary["hub"].items() if key != "stages"}, indent=2))
    return 0


def _prepare(args: argparse.Namespace, extra: list[str]) -> int:

    for name in BUNDLED_MODELS:
        print(f"{PREFIX}{name}: {resolve_model(PREFIX + name)}")
    return 0


DELEGATED: dict[str, tuple[str, str, bool]] = {
    "sft": (
        "persyn_hub.compare.sft",
        "fine-tune the student with TRL (args as `python -m persyn_hub.compare.sft`)",
        True,
    ),
    "evaluate": ("persyn_hub.compare.evaluation", "evaluate a model with lm-evaluation-harness", True),
    "compare": ("persyn_hub.compare.run", "build baselines, train and evaluate a student on each", False),
    "plan-labeling": (
        "persyn_hub.labeling.plan_command",
        "compare labeling designs (every teacher vs m per prompt) at equal spend on existing answers",
        True,
    ),
}
"""Subcommands implemented by another module's `main(argv)`: name -> (module, help, has its own --help)."""

GLOBAL_FLAGS = ("-v", "--verbose")


def split_delegated(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """`[-v] sft --config x.yaml` -> (`[-v]`, "sft", `[--config, x.yaml]`); (argv, None, []) otherwise.

    A delegated command's arguments go to its module verbatim: argparse must not see them, because
    `parse_known_args` hands back unknown flags apart from their values (`[x.yaml] + [--config]`).
    """
    for index, token in enumerate(argv):
        if token in GLOBAL_FLAGS:
            continue
        if token in DELEGATED:
            return argv[:index], token, argv[index + 1 :]
        break
    return argv, None, []


def _delegate(name: str, arguments: list[str]) -> int:
    module_name, _, has_help = DELEGATED[name]
    module = importlib.import_module(module_name)
    if not has_help and arguments[:1] in (["-h"], ["--help"]):
        print(module.__doc__)
        return 0
    return int(module.main(arguments) or 0)


def _add_run_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run a recipe end to end (label, score, train the router, route, generate, assemble)",
        description="Run a PerSyn recipe. Any recipe key can be overridden after the recipe path, "
        "e.g. --labeling.alpha 0.7 --teachers.0.generation.max_new_tokens 32 --output.dir runs/x. "
        "Finished stages are reused from output.dir; an interrupted run resumes where it stopped.",
    )
    run.add_argument("recipe", help="recipe YAML file")
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="ask the rows whose generation failed in an earlier run again (finished stages are otherwise reused)",
    )
    run.add_argument(
        "--resume-from-hub",
        metavar="REPO[@REVISION]",
        default=None,
        help="continue from the stages a run published (output.hub.stages): every stage whose key matches is "
        "downloaded instead of computed, a partial generation asks only its missing rows; new stages are "
        "published to output.hub.stages_repo (default: this repo)",
    )
    run.add_argument(
        "--break-lock",
        action="store_true",
        help="take over output.dir's run lock from a run that is gone (a crashed node, a requeued job) without "
        "waiting launch.timeout for its heartbeat to go stale; a live run on this host is still refused",
    )
    run.set_defaults(handler=_run)


def _add_validate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a pipeline, comparison or SFT recipe (with overrides) and print it",
        description="Check a recipe with the parser of its kind, told from its keys: a pipeline recipe "
        "(persyn run), a comparison recipe (persyn compare: `pipeline:`; its pipeline recipe and "
        "pipeline_overrides are checked too) or an SFT config (persyn sft: `dataset_name:`, "
        "`model_name_or_path:`; keys checked against SFTScriptArguments, TRL SFTConfig and ModelConfig). "
        "Nothing runs or trains; the first line printed names the kind. Override keys as for the command, "
        "e.g. --labeling.alpha 0.2 or --max_steps 5.",
    )
    validate.add_argument("recipe")
    validate.add_argument(
        "--kind",
        choices=["pipeline", "comparison", "sft"],
        default=None,
        help="check the file as this kind instead of telling it from its keys",
    )
    validate.set_defaults(handler=_validate)


def _add_route_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _add_migrate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = commands.add_parser(
        "migrate", help="rewrite a recipe of an older format (e.g. version 1 alpha) into the current one"
    )
    migrate.add_argument("recipe")
    migrate.add_argument("-o", "--output", default=None, help="write here instead of printing")
    migrate.set_defaults(handler=_migrate)


def _add_publish_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    publish = commands.add_parser(
        "publish",
        help="publish a finished run again (its saved recipe.yaml and summary.json); nothing is computed",
        description="Push a finished run's labels, router and data set to the repos its recipe names "
        "(OUTPUT_DIR/recipe.yaml; override any output.hub key, e.g. --output.hub.dataset_repo ORG/NAME), "
        "and record the commits in OUTPUT_DIR/summary.json. For a run whose final publish failed.",
    )
    publish.add_argument("output_dir", metavar="OUTPUT_DIR", help="the output.dir of a finished run")
    publish.set_defaults(handler=_publish)


def _add_prepare_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prepare = commands.add_parser("prepare", help="convert the bundled GGUF models to safetensors once")
    prepare.set_defaults(handler=_prepare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persyn", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run_parser(commands)
    _add_validate_parser(commands)
    _add_route_parser(commands)
    _add_migrate_parser(commands)
    _add_publish_parser(commands)
    _add_prepare_parser(commands)
    for name, (_, text, _) in DELEGATED.items():
        commands.add_parser(name, help=text, add_help=False)  # listed in --help; main() hands it argv
    return parser


MAX_MESSAGE = 800
"""Characters of an error message printed; longer ones keep their start and their end (the fix)."""


def one_line(message: str) -> str:
    """An error message as one line: wrapped text (a YAML error, a library's message) joined by spaces.

    Package messages end with their fix, so a message too long to read keeps its first part (the field
    and the problem) and its last part (the fix) around an ellipsis.
    """
    text = " ".join(message.split())
    if len(text) <= MAX_MESSAGE:
        return text
    half = MAX_MESSAGE // 2
    head = text[:half].rsplit(" ", 1)[0]
    tail = text[-half:].split(" ", 1)[-1]
    return f"{head} … {tail}"


def report_errors(call: Callable[[], Any]) -> int:
    """Run a subcommand: a PersynError is one `persyn: error:` line and exit status 2.

    Any other exception keeps its traceback: it is a bug, and the traceback is what fixes it.
    """

    try:
        return int(call() or 0)
    except PersynError as error:
        print(f"persyn: error: {one_line(str(error)) or type(error).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "persyn: interrupted; finished rows are checkpointed, run the same command to resume.",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # `persyn validate ... | head`: the reader left; Python's own recipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    head, delegated, arguments = split_delegated(argv)
    if delegated is not None:
        args = parser.parse_args([*head, delegated])  # global flags only; `arguments` stay verbatim
        _configure_logging(args.verbose)
        return report_errors(lambda: _delegate(delegated, arguments))
    args, extra = parser.parse_known_args(argv)
    _configure_logging(args.verbose)
    if extra and args.command not in ("run", "validate", "route", "publish"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return report_errors(lambda: args.handler(args, extra))


if __name__ == "__main__":
    sys.exit(main())
