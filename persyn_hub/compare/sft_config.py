"""The SFT recipe's keys and types, checked without importing torch: what `persyn validate` and `persyn sft`
refuse before TRL's parser (or a training run) starts.

An SFT recipe is read by TRL's `TrlParser` over three dataclasses: `SFTScriptArguments` (defined here:
which data), TRL's `SFTConfig` (training) and TRL's `ModelConfig` (student). Importing TRL costs seconds
(it imports torch and transformers), so the fields of the two TRL classes are described once per installed
TRL/transformers version and cached as JSON under `cache_root()/schemas`; a check then reads the cache.
A key none of the three classes has is refused, as `TrlParser` refuses it; a value of the wrong type
(`max_steps: ten`, `save_strategy: no` read by YAML as false) is refused with the field and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from persyn_hub.bundled import cache_root
from persyn_hub.errors import RecipeError
from persyn_hub.recipe.name_checks import check_model_name


@dataclass
class SFTScriptArguments:
    """Which data set to train on (names as in TRL's ScriptArguments where they overlap)."""

    dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "Hub data set id, local save_to_disk folder, or .jsonl/.json/.parquet/.csv file."},
    )
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Hub data set config name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_revision: Optional[str] = field(
        default=None,
        metadata={"help": "Hub data set revision (branch, tag or commit); recorded in the card."},
    )
    messages_column: str = field(default="messages", metadata={"help": "Column with the chat to learn."})
    completion_only: bool = field(
        default=True,
        metadata={"help": "Train on the final assistant turn only (prompt tokens get label -100)."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep the first N rows (debugging)."}
    )


SCRIPT = "SFTScriptArguments"
TRAINING = "SFTConfig"
MODEL = "ModelConfig"
OWNERS = (SCRIPT, TRAINING, MODEL)
"""The three dataclasses of an SFT recipe, in TrlParser's order."""

Spec = dict[str, Any]
"""One field: {"types": ["int", ...], "optional": bool, "choices": [...] or None}."""


def describe(tp: Any, metadata: Any = None) -> Spec:
    """A field's type as JSON: the YAML value kinds it takes, whether null is allowed, and its choices."""
    kinds: list[str] = []
    choices: list[Any] | None = None
    optional = False

    def add(part: Any) -> None:
        nonlocal choices, optional
        origin = typing.get_origin(part)
        if part is type(None):
            optional = True
        elif origin in (typing.Union, types.UnionType):
            for arg in typing.get_args(part):
                add(arg)
        elif origin is typing.Literal:
            values = list(typing.get_args(part))
            if all(isinstance(v, bool) for v in values):
                kinds.append("bool")
            else:
                kinds.append("str")
                choices = (choices or []) + [v for v in values if not isinstance(v, bool)]
        elif isinstance(part, type) and issubclass(part, enum.Enum):
            kinds.append("str")
            choices = (choices or []) + [member.value for member in part]
        elif part is bool:
            kinds.append("bool")
        elif part is int:
            kinds.append("int")
        elif part is float:
            kinds.append("float")
        elif part is str:
            kinds.append("str")
        elif part is list or origin is list:
            kinds.append("list")
        elif part is dict or origin is dict:
            kinds.append("dict")
        else:
            kinds.append("any")

    add(tp)
    if metadata and metadata.get("choices") is not None:
        choices = [str(choice) for choice in metadata["choices"]]
    return {"types": list(dict.fromkeys(kinds)), "optional": optional, "choices": choices}


def describe_dataclass(cls: type) -> dict[str, Spec]:
    hints = typing.get_type_hints(cls)
    return {f.name: describe(hints[f.name], f.metadata) for f in dataclasses.fields(cls) if f.init}


def _versions() -> str:
    import importlib.metadata

    return "-".join(f"{name}{importlib.metadata.version(name)}" for name in ("trl", "transformers"))


@functools.lru_cache(maxsize=1)
def trl_fields() -> dict[str, dict[str, Spec]]:
    """{"SFTConfig": {field: spec}, "ModelConfig": {...}}, from the cache or (once per version) from TRL."""

    cache = cache_root() / "schemas" / f"sft-fields-{_versions()}.json"
    try:
        return json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    from trl import ModelConfig, SFTConfig

    schema = {TRAINING: describe_dataclass(SFTConfig), MODEL: describe_dataclass(ModelConfig)}
    try:  # written whole, then renamed: a concurrent reader never sees half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(schema), encoding="utf-8")
        os.replace(partial, cache)
    except OSError:
        pass  # a read-only cache only costs the TRL import next time
    return schema


def sft_fields() -> dict[str, dict[str, Spec]]:
    """Every key an SFT recipe may hold, by dataclass: SFTScriptArguments, SFTConfig, ModelConfig."""
    return {SCRIPT: describe_dataclass(SFTScriptArguments), **trl_fields()}


TRUE_WORDS = ("true", "false", "yes", "no", "t", "f", "y", "n", "1", "0")
"""Strings `HfArgumentParser` reads as a bool."""


def _accepts(kind: str, value: Any) -> bool:
    if kind == "any":
        return True
    if kind == "bool":
        return isinstance(value, bool) or (isinstance(value, str) and value.lower() in TRUE_WORDS)
    if kind in ("int", "float"):
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            return kind == "float" or float(value).is_integer()
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                return False
            return kind == "float" or number.is_integer()
        return False
    if kind == "str":
        return not isinstance(value, (dict, list, bool))
    if kind == "list":
        return isinstance(value, list)
    if kind == "dict":
        return isinstance(value, (dict, str))
    return True


def check_value(key: str, value: Any, spec: Spec) -> None:
    """`value` fits the field `spec`, or a RecipeError naming `key`, the expected kind and the fix."""
    if value is None:
        if spec["optional"] or "any" in spec["types"]:
            return
        raise RecipeError(f"{key}: is empty (null); expected {' or '.join(spec['types'])}.")
    if not any(_accepts(kind, value) for kind in spec["types"]):
        hint = ""
        if isinstance(value, bool) and spec["choices"] and str(value).lower() not in spec["choices"]:
            word = "no" if value is False else "yes"
            hint = f" YAML reads an unquoted {word} as {str(value).lower()}: quote it ({word!r})."
        expected = (
            f"one of {spec['choices']}"
            if spec["choices"] and spec["types"] == ["str"]
            else " or ".join("a number" if k == "float" else k for k in spec["types"])
        )
        raise RecipeError(f"{key}: expected {expected}, got {value!r}.{hint}")
    choices = spec["choices"]
    if choices and isinstance(value, str) and value not in choices:
        close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RecipeError(f"{key}: {value!r} is not one of {choices}.{hint}")


def owner_of(key: str, fields: dict[str, dict[str, Spec]]) -> str | None:
    return next((owner for owner in OWNERS if key in fields.get(owner, {})), None)


def check_sft_values(
    values: dict[str, Any], *, owners: tuple[str, ...] = OWNERS, prefix: str = ""
) -> dict[str, dict[str, Any]]:
    """Check every key of an SFT recipe (or of a comparison's `sft:` block, `owners=("SFTConfig",)`)
    against the dataclasses' fields and types; return the values grouped by dataclass.

    A key no dataclass has is refused with the closest name, as `TrlParser` refuses it (its `env:` mapping
    of environment variables is allowed, as TRL allows it)."""
    fields = sft_fields()
    grouped: dict[str, dict[str, Any]] = {owner: {} for owner in owners}
    for key, value in values.items():
        where = f"{prefix}{key}"
        if key == "env" and owners == OWNERS:
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: must be a mapping of environment variables, got {value!r}.")
            grouped.setdefault("env", {}).update(value)
            continue
        owner = owner_of(str(key), {name: fields[name] for name in owners})
        if owner is None:
            known = [name for name in owners for name in fields[name]]
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            classes = ", ".join("TRL " + o if o != SCRIPT else o for o in owners)
            raise RecipeError(f"{where}: unknown key (not a field of {classes}).{hint}")
        check_value(where, value, fields[owner][str(key)])
        grouped[owner][str(key)] = value
    return grouped


def check_sft_recipe(values: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """A whole SFT recipe: keys and types, then what `persyn sft` needs before it trains (data and student
    named, the student's name or path usable). `where` (the file) starts every message."""

    try:
        grouped = check_sft_values(values)
        script, model = grouped[SCRIPT], grouped[MODEL]
        if not script.get("dataset_name"):
            raise RecipeError(
                "dataset_name: not set; give a Hub data set id, a save_to_disk folder or a .jsonl file."
            )
        if not model.get("model_name_or_path"):
            raise RecipeError(
                "model_name_or_path: not set; give the student: a Hub id, a local folder or bundled:NAME."
            )
        check_model_name(str(model["model_name_or_path"]), "model_name_or_path")
    except RecipeError as error:
        raise RecipeError(f"{where}: {error}") from None
    return grouped


def dataset_note(dataset_name: str) -> str | None:
    """A local data set that is not there yet (a run writes it) is a note for `persyn validate`, not an error."""
    path = Path(dataset_name)
    local = dataset_name.startswith(("./", "../", "/", "~")) or dataset_name.count("/") > 1
    if path.suffix in (".jsonl", ".json", ".parquet", ".csv") or local:
        if not path.expanduser().exists():
            return (
                f"dataset_name: {dataset_name!r} does not exist yet (a `persyn run` writes it); not checked"
            )
    return None


__all__ = ["SFTScriptArguments", "check_sft_recipe", "check_sft_values", "describe", "sft_fields"]
