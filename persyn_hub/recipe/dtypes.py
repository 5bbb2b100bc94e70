"""Recipe dtypes: checked when a recipe is read, resolved to a torch dtype when a model is loaded.

`auto` picks bfloat16 only where the hardware runs it natively and float32 elsewhere, because emulated
bf16 is slower, not faster: on an AVX2-only CPU torch converts every bf16 element in software and
SmolLM2-135M generates 2x (a forward pass 4x) slower than in float32, while a CPU with AVX512-BF16 or
AMX runs bf16 1.6-2x faster than float32. float16 is never chosen for `auto`: log-probabilities and
reward scores may overflow its range, and CPUs have little native fp16.

What torch actually dispatches decides, not only what the CPU has:
- `torch.backends.cpu.get_cpu_capability()` is the ATen kernel set ("AVX512", "AVX2", ...); it honours
  `ATEN_CPU_CAPABILITY` (so `ATEN_CPU_CAPABILITY=avx2` makes this machine behave like an AVX2 one).
- bf16 matmuls go through oneDNN, which honours `ONEDNN_MAX_CPU_ISA` (older name `DNNL_MAX_CPU_ISA`);
  capped below AVX512_CORE_BF16 it emulates bf16 (measured 2-10x slower than float32 matmuls).
- `torch.cpu.get_capabilities()` reports the CPU's instructions (cpuinfo; ignores both variables).
`MKL_ENABLE_INSTRUCTIONS` only affects float32 BLAS, so it does not change the choice.

This module imports torch only inside the functions that need it, so `recipe/config.py` can check names
without importing torch.
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import TYPE_CHECKING, Any

from persyn_hub.errors import RecipeError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
"""Canonical dtype names a recipe accepts."""
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Short names accepted in recipes and normalised to the canonical ones."""
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")
"""`ONEDNN_MAX_CPU_ISA` values (prefixes) at or above which oneDNN has native bf16 instructions."""
_logged: set[tuple[str, str, str]] = set()


def check_dtype(value: str, field: str) -> str:
    """The canonical name of `value`, or a one-line `RecipeError` naming `field`, the valid names and a fix.

    Called when a recipe is read, so a misspelled dtype fails before any generation, not after it.
    """
    name = str(value).strip().lower()
    name = DTYPE_ALIASES.get(name, name)
    if name in DTYPE_NAMES:
        return name
    valid = [*DTYPE_NAMES, *DTYPE_ALIASES]
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {DTYPE_ALIASES.get(close[0], close[0])!r}?" if close else ""
    raise RecipeError(
        f"{field}: {value!r} is not a dtype; use one of {', '.join(DTYPE_NAMES)} "
        f"(aliases {', '.join(DTYPE_ALIASES)}).{hint}"
    )


def _onednn_bf16_isa() -> tuple[bool, str]:
    """Whether oneDNN may use bf16 instructions, given `ONEDNN_MAX_CPU_ISA`/`DNNL_MAX_CPU_ISA`."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap in ("", "ALL", "DEFAULT"):
        return True, ""
    return cap.startswith(_ONEDNN_BF16_ISAS), cap


def describe_cpu() -> dict[str, Any]:
    """What decides the CPU dtype of `auto`, for run summaries and logs.

    Keys: `capability` (ATen kernels torch dispatches), `avx512_bf16`/`amx_bf16` (the CPU's
    instructions), `onednn_max_isa` (the cap set in the environment, or None), `bf16_native`, `reason`
    (one phrase saying why), `auto_dtype` and `threads` (`torch.get_num_threads()`).
    """
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    features = torch.cpu.get_capabilities()
    avx512_bf16, amx_bf16 = bool(features.get("avx512_bf16")), bool(features.get("amx_bf16"))
    onednn_ok, onednn_cap = _onednn_bf16_isa()
    if not capability.startswith("AVX512"):
        native, reason = False, f"CPU capability {capability}, no native bf16"
    elif not (avx512_bf16 or amx_bf16):
        native, reason = False, f"CPU capability {capability} without AVX512-BF16 or AMX, no native bf16"
    elif not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        native, reason = False, "oneDNN unavailable or disabled, bf16 matmuls would be emulated"
    elif not onednn_ok:
        native, reason = False, f"ONEDNN_MAX_CPU_ISA={onednn_cap} caps oneDNN below native bf16"
    else:
        units = " + ".join(
            name for name, has in (("AVX512-BF16", avx512_bf16), ("AMX-BF16", amx_bf16)) if has
        )
        native, reason = True, f"CPU capability {capability}, native bf16 via {units}"
    return {
        "capability": capability,
        "avx512_bf16": avx512_bf16,
        "amx_bf16": amx_bf16,
        "onednn_max_isa": onednn_cap or None,
        "bf16_native": native,
        "reason": reason,
        "auto_dtype": "bfloat16" if native else "float32",
        "threads": torch.get_num_threads(),
    }


def _auto(device: torch.device) -> tuple[torch.dtype, str]:
    """The dtype `auto` means on `device`, and why."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.cuda.device(index):  # including_emulation=False: pre-Ampere GPUs only emulate bf16
            if torch.cuda.is_bf16_supported(including_emulation=False):
                return torch.bfloat16, f"{torch.cuda.get_device_name(index)} has native bf16"
        return torch.float32, f"{torch.cuda.get_device_name(index)} has no native bf16; fp16 may overflow"
    if device.type == "cpu":
        cpu = describe_cpu()
        return (torch.bfloat16 if cpu["bf16_native"] else torch.float32), cpu["reason"]
    return torch.float32, f"device {device.type}: float32 is the safe choice"


def _log_once(level: int, key: tuple[str, str, str], message: str) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.log(level, message)


def resolve_dtype(name: str, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype to load a model in for the recipe dtype `name` on `device`.

    `device` is where the model will run; None means torch's default device (where `from_pretrained`
    without `device_map` puts it, normally the CPU). `auto` is bfloat16 where `device` runs it natively,
    else float32 (see the module docstring); the choice and its reason are logged once at INFO. An
    explicit `bfloat16` on a CPU that would emulate it is honoured with a one-time warning.
    Example: `resolve_dtype("auto", "cpu")` -> `torch.float32` on an AVX2-only machine.
    """
    import torch

    canonical = check_dtype(name, "dtype")
    target = torch.device(device) if device is not None else torch.get_default_device()
    if canonical == "auto":
        dtype, reason = _auto(target)
        label = dtype_name(dtype)
        _log_once(logging.INFO, ("auto", str(target), label), f"dtype auto -> {label} ({reason})")
        return dtype
    dtype = getattr(torch, canonical)
    if dtype == torch.bfloat16 and target.type == "cpu":
        cpu = describe_cpu()
        if not cpu["bf16_native"]:
            _log_once(
                logging.WARNING,
                ("bfloat16", "cpu", ""),
                f"dtype bfloat16 on this CPU is emulated ({cpu['reason']}) and slower than float32; "
                "use dtype auto or float32.",
            )
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16": the name vLLM and logs take."""
    return str(dtype).removeprefix("torch.")


def local_device() -> torch.device:
    """This process's accelerator: `cuda:LOCAL_RANK` under a launcher (one GPU per process), `cuda` when
    a GPU is visible, else the CPU. Models of every stage are placed here."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
