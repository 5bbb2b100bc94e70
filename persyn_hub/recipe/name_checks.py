"""Checks of what a recipe names: a model (`bundled:` name or local path), reasoning-gym tasks, and
`prompts.source` (a local file is checked when the recipe is read, a Hub id when it loads).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from persyn_hub.bundled import BUNDLED_MODELS, PREFIX, is_bundled
from persyn_hub.errors import RecipeError


def check_task_names(names: list[str]) -> None:
    """Unknown reasoning-gym tasks fail when the recipe is read, with the closest name."""
    try:
        import reasoning_gym
    except ImportError:
        return  # reported with the install hint when the prompts load
    known = list(reasoning_gym.factory.DATASETS)
    for index, name in enumerate(names):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(f"prompts.tasks[{index}] ({name!r}).name: not a reasoning-gym task.{hint}")


def check_model_name(name: str | None, field: str) -> None:
    """`bundled:` names and local paths are checked when the recipe is read; Hub ids when they load."""
    if not name:
        return
    if name.startswith("bundled:"):
        if name.removeprefix(PREFIX) not in BUNDLED_MODELS:
            close = difflib.get_close_matches(name.removeprefix(PREFIX), list(BUNDLED_MODELS), n=1)
            hint = (
                f" Did you mean {PREFIX + close[0]!r}?"
                if close
                else f" Choose from {[PREFIX + k for k in BUNDLED_MODELS]}."
            )
            raise RecipeError(f"{field}: {name!r} is not a bundled model.{hint}")
        return
    local = name.startswith(("./", "../", "/", "~")) or name.count("/") > 1
    if local and not Path(name).expanduser().exists():
        raise RecipeError(
            f"{field}: local model path {name!r} does not exist; fix the path or name a Hub model id (org/name)."
        )


PROMPT_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
"""Suffixes `persyn_hub.data` reads as a local file (not a Hub id)."""


def check_prompts_source(source: str) -> None:
    """Refuse a `prompts.source` that can only be a local path and does not exist.

    Without this a typo surfaced only once the run reached the prompts, or, for a path without a data
    suffix, as a Hub 404. Local means: a data-file suffix (.jsonl/.json/.csv/.parquet, as
    `persyn_hub.data` reads it), a path starting with `./`, `../`, `/` or `~`, or more than one `/` (a Hub
    id is `name` or `org/name`). An existing directory is left to the loader (a `save_to_disk` folder or
    a folder of data files). Anything else is a Hub id, checked when it loads: validation needs no network.
    """

    if is_bundled(source):
        return
    path = Path(source)
    if path.suffix in PROMPT_FILE_SUFFIXES:
        if path.is_file():
            return
    elif source.startswith(("./", "../", "/", "~")) or source.count("/") > 1:
        if path.exists():
            return
    else:
        return
    if source.startswith("~") and path.expanduser().exists():
        fix = f"`~` is not expanded; write the full path {str(path.expanduser())!r}"
    else:
        fix = (
            f"fix the path (relative paths are read from the working directory {str(Path.cwd())!r}) "
            "or name a Hub data set id (org/name) or bundled:NAME"
        )
    what = "is a directory, not a data file" if path.is_dir() else "does not exist"
    raise RecipeError(f"prompts.source: local path {source!r} {what}; {fix}.")
