"""Recipe dataclasses: one YAML file describes one PerSyn run.

A recipe is parsed the TRL/`HfArgumentParser` way: the YAML gives the values, command-line flags
(``--alpha 0.7``, ``--router.num_train_epochs 5``, ``--teachers.0.max_new_tokens 64``) override them.
Every key is checked against the dataclasses, so a misspelled key fails with its full path and the
closest valid name instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY")


class RecipeError(ValueError):
    """A recipe value is missing or wrong; the message names the key and the fix."""


@dataclass
class PromptsConfig:
    """Where the prompts come from and which columns hold what."""

    source: str = "bundled:asdiv"
    """`bundled:asdiv`, `bundled:ifbench`, a Hub data set id, or a local .jsonl/.json/.csv/.parquet file."""
    split: str = "train"
    subset: Optional[str] = None
    """Hub data set config name (`load_dataset(source, subset)`)."""
    revision: Optional[str] = None
    prompt_column: str = "prompt"
    """Column with the prompt: a string, or a chat list of `{role, content}` messages."""
    prompt_template: Optional[str] = None
    """Build the prompt from several columns, e.g. `"{passage} {question}"` (overrides prompt_column)."""
    id_column: Optional[str] = None
    """Column with a stable id; when unset, ids are a hash of the prompt text."""
    answer_column: Optional[str] = None
    """Gold answer column, used by the math verifier."""
    keep_columns: list[str] = field(default_factory=list)
    """Extra source columns carried through to the final data set (e.g. instruction ids for IFBench)."""
    num_prompts: Optional[int] = None
    """How many prompts to route and synthesize for (None: all)."""
    system_prompt: Optional[str] = None
    shuffle: bool = True
    drop_duplicates: bool = False
    """Keep the first of rows with the same prompt id instead of stopping with an error."""


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)


@dataclass
class FewShotExample:
    prompt: str
    response: str


@dataclass
class TeacherConfig:
    """One teacher of the pool: a local model or one or more inference endpoints."""

    name: str
    model: Optional[str] = None
    """Hub id, local path or `bundled:NAME`; required for the local backends."""
    endpoints: list[str] = field(default_factory=list)
    """Base URLs of TGI or OpenAI-compatible servers (requests are spread across them)."""
    backend: Literal["auto", "transformers", "endpoint", "vllm"] = "auto"
    prompt_format: Literal["chat", "completion"] = "chat"
    completion_template: str = "Question: {prompt}\nAnswer:"
    """How a prompt is written for a `completion` teacher; `{prompt}` is replaced by the prompt text."""
    few_shot: list[FewShotExample] = field(default_factory=list)
    few_shot_separator: str = "\n\n"
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    dtype: str = "float32"
    batch_size: int = 8
    max_concurrency: int = 8
    """Concurrent requests per endpoint."""
    timeout: float = 120.0
    """Seconds one endpoint request may take (the whole request, not one read) before it is retried."""
    max_retries: int = 5
    """Retries per row on 429/5xx/timeouts/connection errors/malformed replies; then the row gets an `error`."""
    retry_backoff: float = 1.0
    """First retry delay in seconds; doubles per attempt (capped at 60 s), with jitter; Retry-After wins."""
    endpoint_api: Literal["auto", "openai", "tgi"] = "auto"
    """Routes used on endpoints. `auto`/`openai`: `/v1/chat/completions` and `/v1/completions` (vLLM,
    llama.cpp, TGI >= 2); `tgi`: TGI's native `text_generation` route for `completion` teachers."""
    served_model_name: Optional[str] = None
    """Value of `model=` in endpoint requests (e.g. vLLM's served name); never a bare Hub id in tests."""
    trust_remote_code: bool = False


@dataclass
class StudentConfig:
    model: str = "bundled:smollm2-135m-instruct"
    dtype: str = "float32"
    max_length: int = 2048
    """Rows longer than this are truncated and flagged (`truncated`), never scored silently wrong."""
    batch_tokens: int = 8192
    """Token budget of one scoring batch (padded length x rows)."""
    endpoint: Optional[str] = None
    """Base URL of a served student (TGI, vLLM or llama-cpp-python's server) to score with instead of
    in-process; `model` must still name its tokenizer (the text sent is rendered and checked locally)."""
    endpoint_api: Literal["auto", "tgi", "vllm", "llama_cpp"] = "auto"
    """How the served student reports prompt-token log-probs: TGI `/generate` prefill details, vLLM
    `prompt_logprobs`, or llama-cpp-python's `echo` + `logprobs`; `auto` asks the server which it is."""
    served_model_name: Optional[str] = None
    """Value of `model=` in vLLM / llama.cpp requests; None: the first model the server lists."""
    max_concurrency: int = 8
    """Concurrent scoring requests to the endpoint."""
    timeout: float = 120.0
    """Seconds one scoring request may take before it is retried."""
    max_retries: int = 5
    """Retries per row on 429/5xx/timeouts/connection errors/malformed replies; then the stage stops."""
    retry_backoff: float = 1.0
    """First retry delay in seconds; doubles per attempt (capped at 60 s), with jitter; Retry-After wins."""
    trust_remote_code: bool = False


@dataclass
class QualityConfig:
    kind: Literal["math_answer", "instruction_following", "reward_model"] = "math_answer"
    reward_model: Optional[str] = None
    batch_size: int = 8
    max_length: int = 2048
    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass
class LabelingConfig:
    """The router-training subset: every teacher answers every prompt of it."""

    num_prompts: int = 64
    alpha: float = 0.5
    """Weight of quality in r = alpha * quality + (1 - alpha) * learnability."""
    normalization: Literal["zscore", "minmax", "none"] = "zscore"


@dataclass
class RouterSettings:
    backbone: str = "bundled:minilm-l6-v2"
    max_length: int = 256
    num_train_epochs: int = 30
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    per_device_train_batch_size: int = 16
    eval_fraction: float = 0.25
    early_stopping_patience: int = 5
    freeze_backbone: bool = False
    tie_margin: float = 1e-6
    """Pairs whose reward difference is at most this are ties and give no training signal."""


@dataclass
class RoutingConfig:
    batch_size: int = 64
    budgets: dict[str, float] = field(default_factory=dict)
    """Maximum share of prompts per teacher, e.g. `{big-teacher: 0.3}`; unset teachers are unbounded."""
    router: Optional[str] = None
    """Use an existing router (path or Hub id) instead of training one."""


@dataclass
class HubConfig:
    """Hub repos a run publishes to (`namespace/name`, an organisation namespace works the same way).

    `labels_repo`: intermediate data set (configs `labels` and `routing`); `dataset_repo`: the final SFT-ready
    set; `router_repo`: the router model. Unset repos are not pushed. The token comes from `hf auth login`
    or `HF_TOKEN`, never from the recipe.
    """

    labels_repo: Optional[str] = None
    dataset_repo: Optional[str] = None
    router_repo: Optional[str] = None
    private: bool = False
    revision: Optional[str] = None
    """Branch to push to (created when missing); None pushes to main."""
    license: str = "other"
    """`license` in the data set cards' metadata; set it to what the prompts' and teachers' terms allow."""


@dataclass
class OutputConfig:
    dir: str = "runs/persyn"
    hub: HubConfig = field(default_factory=HubConfig)


@dataclass
class PersynRecipe:
    name: str = "persyn"
    seed: int = 42
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    quality: QualityConfig = field(default_factory=QualityConfig)
    labeling: LabelingConfig = field(default_factory=LabelingConfig)
    router: RouterSettings = field(default_factory=RouterSettings)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set before the run (like TRL's `env:` block); never put tokens here."""

    def __post_init__(self) -> None:
        validate_recipe(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def teacher_names(self) -> list[str]:
        return [teacher.name for teacher in self.teachers]


def validate_recipe(recipe: PersynRecipe) -> None:
    """Cross-field checks; each failure says which key is wrong and how to fix it."""
    if len(recipe.teachers) < 2:
        raise RecipeError(
            f"teachers: the pool has {len(recipe.teachers)} teacher(s); PerSyn routes between at least 2. "
            "Add entries under `teachers:`."
        )
    names = recipe.teacher_names()
    for index, teacher in enumerate(recipe.teachers):
        where = f"teachers[{index}] ({teacher.name!r})"
        if not teacher.name or not teacher.name.strip():
            raise RecipeError(f"teachers[{index}].name: empty; give every teacher a unique name.")
        if names.count(teacher.name) > 1:
            raise RecipeError(f"{where}.name: {teacher.name!r} is used twice; teacher names must be unique.")
        if not teacher.model and not teacher.endpoints:
            raise RecipeError(f"{where}: set `model` (local) or `endpoints` (served teacher).")
        if teacher.backend == "endpoint" and not teacher.endpoints:
            raise RecipeError(f"{where}.endpoints: backend is 'endpoint' but no endpoint URL is given.")
        if teacher.backend in ("transformers", "vllm") and not teacher.model:
            raise RecipeError(f"{where}.model: backend {teacher.backend!r} needs a model id or path.")
        if teacher.prompt_format == "completion" and "{prompt}" not in teacher.completion_template:
            raise RecipeError(f"{where}.completion_template: must contain '{{prompt}}'.")
        if teacher.generation.max_new_tokens <= 0:
            raise RecipeError(f"{where}.generation.max_new_tokens: must be positive.")
        if teacher.max_concurrency <= 0 or teacher.batch_size <= 0:
            raise RecipeError(f"{where}: max_concurrency and batch_size must be positive.")
    if not 0.0 <= recipe.labeling.alpha <= 1.0:
        raise RecipeError(f"labeling.alpha: {recipe.labeling.alpha} is outside [0, 1].")
    if recipe.labeling.num_prompts < 2:
        raise RecipeError("labeling.num_prompts: the router needs at least 2 labeled prompts.")
    if recipe.prompts.num_prompts is not None and recipe.prompts.num_prompts < recipe.labeling.num_prompts:
        raise RecipeError(
            f"prompts.num_prompts ({recipe.prompts.num_prompts}) is smaller than labeling.num_prompts "
            f"({recipe.labeling.num_prompts}); the labeled subset is drawn from the routed prompts."
        )
    if recipe.quality.kind == "reward_model" and not recipe.quality.reward_model:
        raise RecipeError("quality.reward_model: quality.kind is 'reward_model' but no model is named.")
    if recipe.quality.kind == "math_answer" and not recipe.prompts.answer_column:
        raise RecipeError("prompts.answer_column: the math_answer verifier needs the gold answer column.")
    unknown = sorted(set(recipe.routing.budgets) - set(names))
    if unknown:
        raise RecipeError(f"routing.budgets: unknown teacher(s) {unknown}; the pool is {names}.")
    for name, share in recipe.routing.budgets.items():
        if not 0.0 <= float(share) <= 1.0:
            raise RecipeError(f"routing.budgets.{name}: {share} is not a share in [0, 1].")
    for key in recipe.env:
        if any(word in key.upper() for word in SECRET_WORDS):
            raise RecipeError(
                f"env.{key}: secrets do not belong in a recipe (recipes are saved with the run and pushed "
                "to the Hub). Use `hf auth login` or export the variable in your shell instead."
            )
    if not 0.0 < recipe.router.eval_fraction < 1.0:
        raise RecipeError(f"router.eval_fraction: {recipe.router.eval_fraction} must be in (0, 1).")
    if recipe.routing.router and recipe.output.hub.router_repo:
        raise RecipeError(
            "output.hub.router_repo: this recipe routes with a given router (routing.router) and trains none, "
            "so there is no router to publish. Remove one of the two."
        )


# --------------------------------------------------------------------------------------------------
# YAML -> dataclasses


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
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
                return _convert(value, candidate, path)
            except RecipeError as error:
                errors.append(str(error))
        raise RecipeError(errors[0])
    if value is None:
        raise RecipeError(f"{path}: is empty (null); expected {_type_name(tp)}.")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{path}: {value!r} is not one of {list(args)}.")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return _build_dataclass(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{path}: expected a list, got {value!r}.")
        (item_type,) = args
        return [_convert(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: expected a mapping, got {value!r}.")
        key_type, value_type = args
        return {_convert(k, key_type, path): _convert(v, value_type, f"{path}.{k}") for k, v in value.items()}
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


def _build_dataclass(cls: type, values: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else f" Valid keys: {sorted(known)}."
            raise RecipeError(f"{where}: unknown key.{hint}")
        kwargs[key] = _convert(value, hints[key], where)
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


def _apply_override(tree: dict[str, Any], dotted_key: str, raw_value: str) -> None:
    """Set `a.b.0.c` in a nested dict/list tree; YAML-parse the value so numbers and lists work."""
    try:
        value = yaml.safe_load(raw_value) if raw_value != "" else ""
    except yaml.YAMLError:
        value = raw_value  # not YAML (e.g. "{a} {b}" templates): take the text as it is
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


def recipe_from_dict(values: dict[str, Any]) -> PersynRecipe:
    if not isinstance(values, dict):
        raise RecipeError("The recipe must be a YAML mapping of keys such as `prompts:`, `teachers:`.")
    return _build_dataclass(PersynRecipe, values, "")


def load_recipe(path: str | Path, overrides: Optional[list[str]] = None) -> PersynRecipe:
    """Read a recipe YAML (safely: no Python objects) and apply `--key value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML: {error}") from None
    for key, value in parse_overrides(overrides or []):
        _apply_override(values, key, value)
    try:
        return recipe_from_dict(values)
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
