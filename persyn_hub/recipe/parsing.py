"""YAML and `--key value` flags -> recipe dataclasses, the TRL/`HfArgumentParser` way, checked key by key.

The YAML gives the values, command-line flags (`--labeling.alpha 0.2`, `--router.num_train_epochs 5`,
`--teachers.0.generation.max_new_tokens 64`) override them. Every key is checked against the
dataclasses, so a misspelled key fails with its full path and the closest valid name instead of being
silently ignored, and a renamed key names its new name. `persyn compare` parses its own recipe with the
same functions.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

import yaml

from persyn_hub.errors import RecipeError

RENAMED_KEYS = {
    "router.eval_fraction": "router.validation_fraction",
    "routing.router": "routing.reuse_router",
}
"""Old recipe keys -> the keys that replaced them: refused by name, moved by `persyn migrate`."""

RENAME_NOTES = {"router.eval_fraction": " (early stopping; router.test_fraction now sets the metrics' split)"}


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, path: str) -> Any:
    """Turn a YAML value into `tp`, raising a `RecipeError` that names `path` on a mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        candidates = [arg for arg in args if arg is not type(None)]
        errors = []
        for candidate in candidates:
            try:
                return convert(value, candidate, path)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[0])
    if value is None:
        raise RecipeError(f"{path}: is empty (null); expected {type_name(tp)}.")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{path}: {value!r} is not one of {list(args)}.")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return build_dataclass(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {value!r}.")
        (item_type,) = args
        return [convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}.")
        key_type, value_type = args
        return {convert(k, key_type, path): convert(v, value_type, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise RecipeError(f"{path}: expected true or false, got {value!r}.")
    if tp in (int, float):
        if isinstance(value, bool):
            raise RecipeError(f"{path}: expected a number, got {value!r}.")
        try:
            converted = tp(value)
        except (TypeError, ValueError):
            raise RecipeError(f"{path}: expected {tp.__name__}, got {value!r}.") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise RecipeError(f"{path}: expected a whole number, got {value!r}.")
        return converted
    if tp is str:
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{path}: expected a string, got {value!r}.")
        return str(value)
    return value


def build_dataclass(cls: type, values: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            if where in RENAMED_KEYS:
                raise RecipeError(
                    f"{where}: renamed; use {RENAMED_KEYS[where]}{RENAME_NOTES.get(where, '')} "
                    "(`persyn migrate` rewrites it)."
                )
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {sorted(known)}."
            raise RecipeError(f"{where}: unknown key.{hint}")
        kwargs[key] = convert(value, hints[key], where)
    missing = [
        name
        for name, f in known.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        where = f"{path}." if path else ""
        raise RecipeError(f"{where}{missing[0]}: required key is missing.")
    return cls(**kwargs)


def apply_override(tree: dict[str, Any], dotted_key: str, raw_value: str) -> None:
    """Set `a.b.0.c` in a nested dict/list tree; YAML-parse the value so numbers and lists work."""
    try:
        value = yaml.safe_load(raw_value) if raw_value != "" else ""
    except yaml.YAMLError:
        value = raw_value  # not YAML (e.g. "{a} {b}" templates): take the text as it is
    if isinstance(value, dict) and value and all(v is None for v in value.values()) and ":" not in raw_value:
        value = raw_value  # "{answer}" is a template, not a YAML mapping of empty keys
    parts = dotted_key.split(".")
    node: Any = tree
    for position, part in enumerate(parts[:-1]):
        where = ".".join(parts[: position + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--{dotted_key}: {where} has no item {part!r}.")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"--{dotted_key}: {where} is not a section.")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"--{dotted_key}: no list item {last!r}.")
        node[int(last)] = value
    else:
        node[last] = value


def parse_overrides(arguments: list[str]) -> list[tuple[str, str]]:
    """`["--alpha", "0.7", "--router.lr=1e-3"]` -> `[("alpha", "0.7"), ("router.lr", "1e-3")]`."""
    pairs = []
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--"):
            raise RecipeError(f"{argument!r}: overrides are written --key value or --key=value.")
        key = argument[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if index + 1 >= len(arguments):
                raise RecipeError(f"--{key}: missing a value.")
            index += 1
            value = arguments[index]
        pairs.append((key.replace("-", "_"), value))
        index += 1
    return pairs


__all__ = ["RENAMED_KEYS", "apply_override", "build_dataclass", "convert", "parse_overrides", "type_name"]
