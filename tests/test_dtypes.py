"""Recipe dtypes are checked when a recipe is read, and `auto` picks bf16 only where it runs natively."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from persyn_hub.recipe.config import RecipeError, StudentConfig, load_recipe
from persyn_hub.recipe.dtypes import DTYPE_NAMES, check_dtype, describe_cpu, resolve_dtype

ROOT = Path(__file__).parents[1]
RECIPE = "recipes/demo/asdiv-smollm2.yaml"
CPU_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter: the CPU ISA variables are read once, when torch starts."""
    clean = {k: v for k, v in os.environ.items() if k not in CPU_ISA_VARIABLES}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**clean, **env},
        timeout=300,
    )


RESOLVE_AUTO = """
import json, logging, torch
logging.basicConfig(level=logging.INFO, format="%(message)s")
from persyn_hub.recipe.dtypes import describe_cpu, resolve_dtype
first, second = resolve_dtype("auto"), resolve_dtype("auto", "cpu")
print(json.dumps({"dtype": str(first), "again": str(second), "cpu": describe_cpu(),
                  "capability": torch.backends.cpu.get_cpu_capability()}))
"""


def resolve_auto(**env: str) -> tuple[dict, str]:
    result = run_python(RESOLVE_AUTO, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_recipe_refuses_a_misspelled_student_dtype():
    with pytest.raises(RecipeError) as error:
        load_recipe(ROOT / RECIPE, ["--student.dtype", "bfloat61"])
    message = str(error.value)
    assert "student.dtype" in message and "'bfloat61'" in message
    assert "Did you mean 'bfloat16'?" in message
    assert all(name in message for name in DTYPE_NAMES)
    assert "\n" not in message


def test_teacher_and_quality_dtypes_are_checked_with_their_field():
    with pytest.raises(RecipeError, match=r"teachers\[1\] \('gemma-3-270m'\)\.dtype: 'fp61'"):
        load_recipe(ROOT / RECIPE, ["--teachers.1.dtype", "fp61"])
    with pytest.raises(RecipeError, match=r"quality\.dtype: 'float64'"):
        load_recipe(ROOT / RECIPE, ["--quality.dtype", "float64"])


def test_aliases_are_normalised_and_auto_is_the_default():
    recipe = load_recipe(ROOT / RECIPE, ["--student.dtype", "BF16", "--teachers.0.dtype", "fp32"])
    assert recipe.student.dtype == "bfloat16"
    assert recipe.teachers[0].dtype == "float32"
    assert StudentConfig().dtype == "auto"
    assert check_dtype(" fp16 ", "x.dtype") == "float16"


def test_cli_validate_prints_one_line_and_exits_2():
    result = subprocess.run(
        [sys.executable, "-m", "persyn_hub.cli", "validate", RECIPE, "--student.dtype", "bfloat61"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "student.dtype" in lines[0] and "bfloat61" in lines[0] and "bfloat16" in lines[0]


@pytest.mark.parametrize(
    "name, expected",
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
    ],
)
def test_explicit_names_resolve_as_asked(name, expected):
    assert resolve_dtype(name) == expected
    assert resolve_dtype(name, "cpu") == expected
    assert resolve_dtype(name, torch.device("meta")) == expected


def test_unknown_names_are_refused_at_load_time_too():
    with pytest.raises(RecipeError, match="bfloat61"):
        resolve_dtype("bfloat61")
    assert resolve_dtype("auto", "meta") == torch.float32  # no hardware to run bf16 natively


def test_auto_follows_what_the_hardware_does_natively():
    """Without ISA caps: bf16 exactly when torch dispatches AVX-512 kernels and the CPU has bf16 units."""
    out, log = resolve_auto()
    features = torch.cpu.get_capabilities()
    native = out["capability"].startswith("AVX512") and bool(
        features.get("avx512_bf16") or features.get("amx_bf16")
    )
    assert out["cpu"]["bf16_native"] is native
    assert out["dtype"] == out["again"] == ("torch.bfloat16" if native else "torch.float32")
    assert log.count("dtype auto -> ") == 1, log  # logged once, with the reason
    assert out["cpu"]["reason"] in log
    assert out["cpu"]["threads"] >= 1


def test_auto_is_float32_when_torch_runs_avx2_kernels():
    """`ATEN_CPU_CAPABILITY=avx2` emulates an AVX2-only machine: bf16 would be converted in software."""
    out, log = resolve_auto(ATEN_CPU_CAPABILITY="avx2")
    assert out["capability"] == "AVX2"  # torch honours the variable
    assert out["dtype"] == "torch.float32"
    assert out["cpu"]["bf16_native"] is False
    assert "dtype auto -> float32 (CPU capability AVX2, no native bf16)" in log


def test_auto_is_float32_when_onednn_is_capped_below_bf16():
    out, log = resolve_auto(ONEDNN_MAX_CPU_ISA="AVX2")
    assert out["dtype"] == "torch.float32"
    assert out["cpu"]["onednn_max_isa"] == "AVX2"


def test_describe_cpu_matches_torch():
    cpu = describe_cpu()
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["auto_dtype"] == ("bfloat16" if cpu["bf16_native"] else "float32")


def test_an_auto_student_loads_in_float32_on_an_avx2_machine():
    code = (
        "from persyn_hub.recipe.config import StudentConfig\n"
        "from persyn_hub.scoring.learnability.scorer import load_student\n"
        "model, _ = load_student(StudentConfig(dtype='auto'))\n"
        "print(model.dtype)\n"
    )
    result = run_python(code, ATEN_CPU_CAPABILITY="avx2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "torch.float32"
