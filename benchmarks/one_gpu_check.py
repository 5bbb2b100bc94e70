"""One GPU, one command: persyn_hub's CUDA paths on a lent single-GPU machine, and the same logic on a CPU.

The GPU tests (tests/test_gpu_launch.py) need two GPUs and vLLM. The machine this project is sometimes lent
has one H100 or H200, Python 3.12, torch 2.11, transformers 5.17, accelerate, pyarrow and pandas, but no
datasets, evaluate, trl or vLLM, no network, and carries 64 MiB per call. This checks what one GPU can:
  (a) learnability scored on the device (float32, and the dtype `auto` picks) equals CPU float32 scores;
  (b) the scorer's response tokens/s against bench_learnability.py's naive per-row loop, on the same rows;
  (c) a router trained on the device by `train_router` (the transformers Trainer), its held-out top-1;
  (d) a transformers-backend teacher (`generate_locally`) generating on the device, tokens/s.
It prints a table, writes it to `--out`/one_gpu_check.json and exits 1 if a check failed; every check runs
even after one failed, so one device call reports them all.

One model is student, teacher and router backbone: `--model` (a .gguf, a folder or `bundled:NAME`). On the
device it is `smollm2-trimmed.gguf`, the bundled SmolLM2-135M cut to its first 12 of 30 blocks so that it
fits the 64 MiB (one_gpu_inputs.py): its answers make no sense, which none of the checks needs.
docs/scale.md ("One GPU: a check ready to run") has the bounds, the exact device command and a CPU run.

    python benchmarks/one_gpu_check.py --prepare-wheels wheels/one-gpu   # networked machine, dev install
    # the lent machine (device `run`, carry ["wheels/one-gpu"]), 2-4 minutes:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/one-gpu/*.whl &&
        HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/site python3 benchmarks/one_gpu_check.py \
        --model wheels/one-gpu/smollm2-trimmed.gguf --out $OUT
    python benchmarks/one_gpu_check.py --device cpu --layers 12   # here: the same model, on the CPU
    python benchmarks/one_gpu_check.py --device cpu --quick --layers 2   # the logic in a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from bench_learnability import naive_rows
from datasets import Dataset, disable_progress_bars
from one_gpu_inputs import (
    CARRIED_LAYERS,
    HANDFUL,
    ROOT,
    TEACHERS,
    TOPICS,
    long_pool,
    prepare,
    router_labels,
    trim_gguf,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

import persyn_hub
from persyn_hub.bundled import bundled_gguf_path, is_bundled, resolve_model
from persyn_hub.generation.checkpoint import GenerationCheckpoint
from persyn_hub.generation.engines import release_engines
from persyn_hub.generation.local import generate_locally
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.recipe.config import GenerationConfig, RouterSettings, StudentConfig, TeacherConfig
from persyn_hub.recipe.dtypes import dtype_name, local_device, resolve_dtype
from persyn_hub.router.training import RouterTask, train_router
from persyn_hub.scoring.learnability.scorer import load_student, score_learnability

CHECKS = (
    "(a) learnability = CPU float32",
    "(b) scorer vs naive loop",
    "(c) router",
    "(d) teacher generation",
)
VERSIONS = ("torch", "transformers", "accelerate", "huggingface_hub", "datasets", "pyarrow", "persyn_hub")
SAME_DTYPE = {torch.float32: 1e-4, torch.bfloat16: 0.05}
"""Max |difference| of a row's mean log-probability between two computations in one dtype: float32 is
bench_learnability.py's bound; bf16 rounding moves a long row's mean by a few 1e-3."""
BF16_VS_FLOAT32 = 0.25
"""(a) `auto` -> bf16 against CPU float32: bf16 moves a token's log-probability by up to ~0.1, and the
handful's answers of two or three tokens keep that in their mean (0.08 measured on a CPU)."""


@dataclass(frozen=True)
class Sizes:
    """How much each check does: the device run's defaults, or QUICK (the logic in seconds on a CPU)."""

    pool: tuple[int, int, tuple[int, int]] = (16, 4, (100, 2000))
    """(b) prompts, answers per prompt, answer tokens from-to (bench_learnability.py's K=4 pool)."""
    router_prompts: int = 240
    epochs: int = 8
    top1_floor: float = 0.8
    """Held-out top-1 agreement the router must reach; its teachers differ by topic; chance is 1/3."""
    generation: tuple[int, int, int] = (64, 16, 128)
    """(d) prompts, batch size, new tokens per answer."""


QUICK = Sizes(pool=(2, 2, (32, 96)), router_prompts=36, epochs=2, top1_floor=0.0, generation=(4, 4, 8))


@dataclass
class Row:
    """One line of the table: what was measured, against which bound, and whether it held."""

    check: str
    device: str
    dtype: str
    result: str
    bound: str
    passed: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# The checks


def model_folder(name: str, work: Path, layers: int | None) -> str:
    """A `from_pretrained` folder: a `bundled:` name resolved, or cut to its first `layers` blocks as the
    carried model is, a .gguf dequantized to safetensors in `work`."""
    if layers and is_bundled(name):
        trim_gguf(bundled_gguf_path(name), work / f"trimmed-{layers}.gguf", layers)
        name = str(work / f"trimmed-{layers}.gguf")
    if not name.endswith(".gguf"):
        return resolve_model(name)
    source, target = Path(name), work / Path(name).stem
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # else save_pretrained refuses
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def where(model: Any) -> tuple[str, str]:
    """The device and dtype a loaded model runs in: what the project chose, not what was asked."""
    parameter = next(model.parameters())
    return str(parameter.device), dtype_name(parameter.dtype)


def learnability(folder: str, dtypes: tuple[str, ...]) -> list[Row]:
    """(a) The handful scored on the CPU in float32, then loaded by the project (`load_student`: its device,
    `auto` -> bf16 on a GPU that has it) in each of `dtypes`, same rows."""
    pool = Dataset.from_list([{"messages": m, "response": r, "error": None} for m, r in HANDFUL])
    cpu = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    student = StudentConfig(model=folder, dtype="float32")
    scored = score_learnability(pool, student, model=cpu, tokenizer=AutoTokenizer.from_pretrained(folder))
    reference, rows = list(scored["learnability"]), []
    for name in dtypes:
        student = StudentConfig(model=folder, dtype=name)
        model, tokenizer = load_student(student)
        started = time.perf_counter()
        scores = list(score_learnability(pool, student, model=model, tokenizer=tokenizer)["learnability"])
        seconds = time.perf_counter() - started
        device, dtype = where(model)
        diff = max(abs(a - b) for a, b in zip(scores, reference))
        bound = SAME_DTYPE[torch.float32] if model.dtype == torch.float32 else BF16_VS_FLOAT32
        details = {"scores": scores, "cpu_float32": reference}
        result = f"max abs diff {diff:.1e} over {len(pool)} rows"
        passed = diff <= bound
        rows.append(
            Row(CHECKS[0], device, f"{name} -> {dtype}", result, f"<= {bound:g}", passed, seconds, details)
        )
        del model
        release_engines()
    return rows


def scorer_speed(
    folder: str, dtypes: tuple[str, ...], prompts: int, teachers: int, lengths: tuple[int, int]
) -> list[Row]:
    """(b) `score_learnability` and bench_learnability.py's naive loop: same rows, model and dtype, warmed."""
    rows = []
    for name in dtypes:
        student = StudentConfig(model=folder, dtype=name, max_length=4096)
        model, tokenizer = load_student(student)
        pool = long_pool(tokenizer, prompts, teachers, lengths)
        warm = pool.select(range(2)).map(lambda row: {"response": row["response"][:200]})
        score_learnability(warm, student, model=model, tokenizer=tokenizer)
        naive_rows(model, tokenizer, warm, student.max_length)
        started = time.perf_counter()
        scored = score_learnability(pool, student, model=model, tokenizer=tokenizer)
        stage = time.perf_counter() - started
        naive = naive_rows(model, tokenizer, pool, student.max_length)
        naive_seconds, tokens = sum(naive["seconds"]), sum(scored["num_response_tokens"])
        diff = max(abs(a - b) for a, b in zip(scored["learnability"], naive["scores"]))
        device, dtype = where(model)
        bound = SAME_DTYPE[model.dtype]
        result = (
            f"{tokens / stage:,.0f} vs naive {tokens / naive_seconds:,.0f} tok/s "
            f"({naive_seconds / stage:.1f}x; {len(pool)} rows, {tokens:,} tokens)"
        )
        details = {
            "tokens": tokens,
            "stage_seconds": stage,
            "naive_seconds": naive_seconds,
            "max_abs_diff": diff,
        }
        bound_text = f"max abs diff {diff:.1e} <= {bound:g}"
        rows.append(
            Row(CHECKS[1], device, f"{name} -> {dtype}", result, bound_text, diff <= bound, stage, details)
        )
        del model
        release_engines()
    return rows


def router(folder: str, sizes: Sizes, work: Path) -> Row:
    """(c) `train_router` as a run calls it (Trainer, Bradley-Terry loss, early stopping) on topic labels."""
    settings = RouterSettings(
        backbone=folder,
        max_length=48,
        num_train_epochs=sizes.epochs,
        learning_rate=5e-5,
        early_stopping_patience=3,
        learning_curve=[],
    )
    task = RouterTask(teachers=list(TEACHERS), student=folder, alpha=0.0, seed=0)
    started = time.perf_counter()
    result = train_router(
        router_labels(sizes.router_prompts), settings, task, output_dir=str(work / "router")
    )
    seconds = time.perf_counter() - started
    metrics, (device, dtype) = result.metrics, where(result.router)
    top1 = metrics["top1_agreement"]
    text = (
        f"top-1 {top1:.2f} on {metrics['split_sizes']['test']} test prompts (chance {1 / len(TEACHERS):.2f}), "
        f"reward recovered {metrics['reward_recovered']:.2f}"
    )
    details = {key: metrics[key] for key in ("top1_agreement", "reward_recovered", "split_sizes")}
    floor = sizes.top1_floor
    return Row(CHECKS[2], device, dtype, text, f"top-1 >= {floor:g}", top1 >= floor, seconds, details)


def generation(folder: str, rows: int, batch: int, new_tokens: int, work: Path) -> Row:
    """(d) The transformers backend (`generate_locally`, greedy) on the device, after a warm-up batch."""
    teacher = TeacherConfig(
        name="smollm2",
        model=folder,
        backend="transformers",
        batch_size=batch,
        generation=GenerationConfig(max_new_tokens=new_tokens),
    )
    asks = [f"Tell me about {TOPICS[i % len(TOPICS)]}, part {i}." for i in range(rows)]
    prompts = Dataset.from_list(
        [{"prompt_id": f"g{i}", "messages": [{"role": "user", "content": ask}]} for i, ask in enumerate(asks)]
    )
    with GenerationCheckpoint(work / "warm") as checkpoint:
        warm = prompts.select(range(batch))
        generate_locally(warm, teacher, checkpoint=checkpoint, stats=GenerationStats(teacher.name))
    stats = GenerationStats(teacher.name)
    with GenerationCheckpoint(work / "timed") as checkpoint:
        started = time.perf_counter()
        generated = generate_locally(prompts, teacher, checkpoint=checkpoint, stats=stats)
        seconds = time.perf_counter() - started
    release_engines()
    device = local_device()  # where load_teacher put the teacher, in the dtype `auto` means there
    dtype = dtype_name(resolve_dtype(teacher.dtype, device))
    tokens = stats.completion_tokens
    text = f"{tokens / seconds:,.0f} tok/s ({tokens:,} new tokens, {len(generated)} rows, batch {batch})"
    details = {"tokens": tokens, "empty": sum(r is None for r in generated["response"])}
    asked = stats.requests == rows
    return Row(CHECKS[3], str(device), f"auto -> {dtype}", text, "every row asked", asked, seconds, details)


# --------------------------------------------------------------------------------------------------
# The report


def environment(folder: str) -> dict[str, Any]:
    """What ran: package versions (the image's or the carried wheels'), persyn_hub's origin, the device."""
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    config = json.loads((Path(folder) / "config.json").read_text())
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "versions": versions,
        "persyn_hub_from": str(Path(persyn_hub.__file__).parent),
        "device": torch.cuda.get_device_name(0)
        if cuda
        else f"CPU ({torch.backends.cpu.get_cpu_capability()})",
        "cuda": torch.version.cuda if cuda else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "highest": no TF32
        "threads": torch.get_num_threads(),
        "model": {key: config.get(key) for key in ("num_hidden_layers", "hidden_size", "vocab_size")},
    }


def report(rows: list[Row], env: dict[str, Any], out: Path, seconds: float) -> bool:
    """Print the table and write it with the environment to `out`/one_gpu_check.json; True if all passed."""
    print(f"\n{env['device']}, {env['threads']} threads; Python {env['python']}; model {env['model']}")
    print(
        ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f"; persyn_hub from {env['persyn_hub_from']}"
    )
    print(
        "| check | device | dtype | result | bound | ok | seconds |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for r in rows:
        ok = "yes" if r.passed else "NO"
        print(f"| {r.check} | {r.device} | {r.dtype} | {r.result} | {r.bound} | {ok} | {r.seconds:.1f} |")
    passed = all(r.passed for r in rows)
    print(f"{'all checks passed' if passed else 'FAILED'} in {seconds:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    document = {"environment": env, "checks": [dataclasses.asdict(r) for r in rows], "passed": passed}
    (out / "one_gpu_check.json").write_text(
        json.dumps({**document, "seconds": seconds}, indent=2, default=str)
    )
    return passed


def guarded(name: str, check: Any, *args: Any) -> list[Row]:
    """Run one check; an exception becomes a failed row, so the other checks still run in the same call."""
    started = time.perf_counter()
    try:
        result = check(*args)
    except Exception as error:  # noqa: BLE001 - one device call must report every check it can
        release_engines()
        detail = f"{type(error).__name__}: {error}"
        print(f"{name} failed: {detail}", file=sys.stderr, flush=True)
        return [Row(name, "-", "-", detail[:300], "no error", False, time.perf_counter() - started)]
    return result if isinstance(result, list) else [result]


def main() -> None:
    """Prepare the carried folder, or run the four checks and report them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--prepare-wheels", type=Path, metavar="DIR", help="write the carried folder, then stop"
    )
    parser.add_argument("--python-version", default="3.12", help="the device image's (for --prepare-wheels)")
    parser.add_argument(
        "--layers",
        type=int,
        help=f"keep a bundled model's first N blocks (the carried one: {CARRIED_LAYERS})",
    )
    parser.add_argument(
        "--model", default="bundled:smollm2-135m-instruct", help="a .gguf, a folder or bundled:NAME"
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "one-gpu-check")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: the logic in seconds, no pass marks"
    )
    args = parser.parse_args()
    if args.prepare_wheels:
        prepare(args.prepare_wheels, args.python_version, args.layers or CARRIED_LAYERS)
        return
    if args.device == "cpu":
        # before CUDA starts, so the project's own placement (local_device, the Trainer) picks the CPU
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible; run with --device cpu to check the logic on the CPU")
    disable_progress_bars()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="one-gpu-check-") as scratch:
        work = Path(scratch)
        folder = model_folder(args.model, work, args.layers)
        dtypes, sizes = ("float32", "auto"), QUICK if args.quick else Sizes()
        rows = guarded(CHECKS[0], learnability, folder, dtypes)
        rows += guarded(CHECKS[1], scorer_speed, folder, dtypes, *sizes.pool)
        rows += guarded(CHECKS[2], router, folder, sizes, work)
        rows += guarded(CHECKS[3], generation, folder, *sizes.generation, work)
        passed = report(rows, environment(folder), args.out, time.perf_counter() - began)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
