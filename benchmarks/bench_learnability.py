"""Benchmark: the learnability stage vs a naive per-row HF loop, on teacher answers of realistic length.

The pool. `--prompts` real math problems (reasoning-gym `gsm_symbolic`, generated offline from seed 0
and loaded through `load_prompts`, as the default recipe does), each answered by K teachers. Every
answer is a worked solution of realistic length built from real text: the problem's own worked solution
(`answer_cot`), then worked solutions of other gsm_symbolic problems ("a similar problem: ...") until it
reaches its drawn length, then a final-answer line. Lengths are drawn uniformly from `--min-tokens` to
`--max-tokens` (100 to 2,000 student tokens) by a RNG seeded per (prompt, teacher), so the first K
teachers' answers are the same whatever K or the number of prompts; their min/median/max are printed.
The pool for K = 2, 4, 8 (`--teachers 2,4,8`) is the first K teachers of each prompt. `--max-length`
(default 4096) is above every row, so no row is cut.

The two paths, same rows, same model (bundled SmolLM2-135M, `load_student`), same dtype (`--dtype`,
float32 by default). The stage is `score_learnability` as the pipeline calls it (tokenization
included): each prompt encoded once, its K responses scored from the cached prompt, packed by length
under `--batch-tokens`, logits only at response positions, logsumexp + gather. The naive loop is one
row at a time: tokenize, a full forward with logits at every position, a full log_softmax, gather the
response tokens, mean. Their mean log-probabilities must agree: max |diff| <= 1e-4 (printed). The naive
loop's rows are independent, so it is timed row by row once on the largest pool and its time for a
K pool is the sum over that pool's rows (each side's fastest of `--repeats` runs, alternating).

What is counted (FLOPs of each path, from what the model was actually asked to compute, read off every
forward call by a hook):
  * transformer body: 2 x non-embedding parameters (106.2M for SmolLM2-135M: every parameter except the
    tied embedding / output matrix) x every position forwarded: input_ids.numel() of each call, so the
    padding the stage's batches carry is counted; the naive loop forwards every prompt + response
    position once per row, without padding;
  * output layer: 2 x hidden x vocabulary (2 x 576 x 49,152) x every position logits are computed at:
    the logits tensor's rows x positions of each call (for the stage: the response positions of its
    batches, padding included, plus one position per prompt-encoding row; for the naive loop: every
    position of every row).
  Not counted: attention scores and weighted sums (4 x layers x hidden x context per position, about
  a third of the body at an average context of 1,000 tokens), the log-softmax / logsumexp, embedding
  lookups. The
  roofline fraction (stage FLOP/s over the dense matmul FLOP/s of this machine, timed with a
  2048x2048 torch.matmul in the same dtype and thread count) is therefore a lower bound.

`--processes 1,2` (off by default; it adds about 8 minutes) also scores the K=4 pool with the stage
alone in fresh processes: 1 process at 1 thread, 1 process at 2 threads, and 2 CPU processes at 1
thread each (`python -m torch.distributed.run --nproc_per_node 2`, OMP_NUM_THREADS=1, accelerate
PartialState(cpu=True) over gloo: each rank scores a contiguous shard, as under `accelerate launch`),
and prints tokens/s and the scaling efficiency: tok/s with 2 processes / (2 x tok/s of 1 process at 1
thread), and against 1 process with the same 2 threads. `--processes-only` skips the stage-vs-naive part.

    python benchmarks/bench_learnability.py                       # 12 prompts, K=2,4,8, float32: ~15 min
    python benchmarks/bench_learnability.py --repeats 2           # fastest of 2: ~30 min
    python benchmarks/bench_learnability.py --processes 1,2 --processes-only   # scaling only: ~8 min
    python benchmarks/bench_learnability.py --prompts 2 --teachers 2,4 --max-tokens 400   # smoke: ~1 min

Durations are for a quiet 2-core AVX-512 CPU in float32 and grow linearly with `--prompts`. On a busy
machine, 2 threads can run 10x slower than 1 (OpenMP threads wait for a preempted sibling): keep
other work off the cores, or compare at `--threads 1`.
Last line (K=4, or the `--report-teachers` pool): `speedup_vs_naive=X roofline_fraction=Y max_abs_diff=Z`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, disable_progress_bars

from persyn_hub.data import load_prompts
from persyn_hub.recipe.config import ProceduralTask, PromptsConfig, StudentConfig
from persyn_hub.scoring.learnability.scorer import load_student, score_learnability
from persyn_hub.scoring.learnability.tokens import tokenize_for_student

FILLER_PROBLEMS = 128
"""gsm_symbolic problems whose worked solutions long answers borrow (beyond the prompts themselves)."""


# --------------------------------------------------------------------------------------------------
# The pool


def load_problems(count: int) -> Dataset:
    """`count` gsm_symbolic problems (prompt_id, messages, answer, metadata with `answer_cot`), seed 0."""
    size = count + 32  # a few are left out as evaluation items or duplicates
    config = PromptsConfig(
        source="reasoning-gym",
        tasks=[ProceduralTask("gsm_symbolic", size=size)],
        num_prompts=count,
        drop_duplicates=True,
    )
    problems = load_prompts(config, seed=0)
    if len(problems) < count:
        raise SystemExit(f"only {len(problems)} gsm_symbolic problems were generated, {count} needed")
    return problems


def worked_answer(
    tokenizer: Any,
    own: str,
    answer: str,
    others: list[tuple[str, str]],
    target: int,
    rng: np.random.Generator,
) -> str:
    """A worked solution of about `target` student tokens: the problem's own solution, then solutions of
    similar problems (real text, drawn by `rng`), cut to fit, then the final answer."""
    tail = f"\n\nSo the final answer is {answer}."
    budget = max(1, target - len(tokenizer(tail, add_special_tokens=False)["input_ids"]))
    parts = [own.strip()]
    count = len(tokenizer(parts[0], add_special_tokens=False)["input_ids"])
    while count < budget:
        question, solution = others[int(rng.integers(len(others)))]
        part = f"\n\nTo check the method, a similar problem: {question.strip()}\n{solution.strip()}"
        parts.append(part)
        count += len(tokenizer(part, add_special_tokens=False)["input_ids"])
    ids = tokenizer("".join(parts), add_special_tokens=False)["input_ids"][:budget]
    return tokenizer.decode(ids) + tail


def build_pool(tokenizer: Any, prompts: int, teachers: int, min_tokens: int, max_tokens: int) -> Dataset:
    """`prompts` x `teachers` rows (prompt-major), each answer's length drawn from [min, max] tokens."""
    problems = load_problems(prompts + FILLER_PROBLEMS)
    solutions = [json.loads(m)["answer_cot"] for m in problems["metadata"]]
    texts = [m[-1]["content"] for m in problems["messages"]]
    rows = []
    for p in range(prompts):
        row = problems[p]
        others = [(texts[j], solutions[j]) for j in range(len(problems)) if j != p]
        for k in range(teachers):
            rng = np.random.default_rng([0, p, k])  # per (prompt, teacher): stable across K and --prompts
            target = int(rng.integers(min_tokens, max_tokens + 1))
            response = worked_answer(tokenizer, solutions[p], row["answer"], others, target, rng)
            rows.append(
                {
                    "prompt_id": row["prompt_id"],
                    "messages": row["messages"],
                    "teacher": f"teacher-{k}",
                    "response": response,
                    "error": None,
                }
            )
    return Dataset.from_list(rows)


def warm_pool(pool: Dataset, rows: int) -> Dataset:
    """The first `rows` rows with short answers: a warm-up that costs seconds, not a long row's forward."""
    return pool.select(range(min(rows, len(pool)))).map(lambda row: {"response": row["response"][:200]})


def response_lengths(tokenizer: Any, pool: Dataset) -> list[int]:
    """Response tokens of every row, as the student tokenizes it (what both paths score)."""
    ids, starts = tokenize_for_student(tokenizer, pool["messages"], pool["response"])
    return [len(row) - start for row, start in zip(ids, starts)]


def first_teachers(pool: Dataset, k: int) -> list[int]:
    """Row positions of the first `k` teachers of every prompt (the pool for K = k)."""
    return [i for i, name in enumerate(pool["teacher"]) if int(name.split("-")[1]) < k]


# --------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Work:
    """Positions the model was asked to run (body) and to compute logits at (output layer)."""

    body: int = 0
    logits: int = 0
    calls: int = 0

    def flops(self, body_params: int, hidden: int, vocab: int) -> float:
        return 2.0 * body_params * self.body + 2.0 * hidden * vocab * self.logits


@dataclass
class WorkCounter:
    """A forward hook that adds every call's input positions and logits positions to `work`."""

    work: Work = field(default_factory=Work)

    def __call__(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self.work.body += int(input_ids.numel())
        self.work.logits += int(output.logits.shape[0] * output.logits.shape[1])
        self.work.calls += 1


def counted(hooked: Any, function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, Work]:
    """`function(*args, **kwargs)`, its wall time and the work the model did meanwhile."""
    counter = WorkCounter()
    handle = hooked.register_forward_hook(counter, with_kwargs=True)
    try:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        seconds = time.perf_counter() - started
    finally:
        handle.remove()
    return result, seconds, counter.work


def naive_rows(model: Any, tokenizer: Any, pool: Dataset, max_length: int) -> dict[str, list]:
    """One row at a time: tokenize, full logits, full log_softmax, gather the response tokens, mean.
    Returns per row: the mean log-probability, its response tokens, its positions, its wall time."""
    scores, tokens, positions, seconds = [], [], [], []
    with torch.no_grad():
        for messages, response in zip(pool["messages"], pool["response"]):
            started = time.perf_counter()
            ids, starts = tokenize_for_student(tokenizer, [messages], [response])
            row_ids, start = ids[0][:max_length], starts[0]
            input_ids = torch.tensor([row_ids], device=model.device)  # the model's device: CPU or a GPU
            logprobs = F.log_softmax(model(input_ids).logits[0].float(), dim=-1)
            targets = input_ids[0, start:]
            at = torch.arange(start - 1, len(row_ids) - 1, device=model.device)
            scores.append(logprobs[at, targets].mean().item())
            seconds.append(time.perf_counter() - started)
            tokens.append(len(row_ids) - start)
            positions.append(len(row_ids))
    return {"scores": scores, "tokens": tokens, "positions": positions, "seconds": seconds}


def matmul_flops(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    """Dense matmul FLOP/s of this machine in `dtype` (the roofline the scorer is compared with)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.matmul(a, b)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started)


def log(message: str) -> None:
    """Progress of a long run, on stderr so stdout holds only the results."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def compare(args: argparse.Namespace, model: Any, tokenizer: Any, pool: Dataset, ks: list[int]) -> dict:
    """Stage on each K pool and the naive loop row by row on the largest, fastest of `--repeats` each."""
    student = StudentConfig(dtype=args.dtype, batch_tokens=args.batch_tokens, max_length=args.max_length)
    rows = {k: first_teachers(pool, k) for k in ks}
    best: dict[int, dict[str, Any]] = {k: {"stage": float("inf"), "naive": float("inf")} for k in ks}
    for repeat in range(args.repeats):
        for k in ks:
            subset = pool.select(rows[k])
            log(f"repeat {repeat + 1}/{args.repeats}: the stage on K={k} ({len(subset)} rows)")
            scored, seconds, work = counted(
                model, score_learnability, subset, student, model=model, tokenizer=tokenizer
            )
            if seconds < best[k]["stage"]:
                best[k].update(stage=seconds, work=work, scored=scored)
        log(f"repeat {repeat + 1}/{args.repeats}: the naive loop on {len(pool)} rows")
        naive, _, work = counted(model, naive_rows, model, tokenizer, pool, args.max_length)
        if work.body != sum(naive["positions"]) or work.logits != work.body:
            raise SystemExit(f"the naive loop ran {work}, not one full forward per row")
        for k in ks:
            total = sum(naive["seconds"][i] for i in rows[k])
            if total < best[k]["naive"]:
                best[k].update(naive=total, naive_scores=[naive["scores"][i] for i in rows[k]])
    results = {}
    for k in ks:
        scored = best[k]["scored"]
        stage_tokens = list(scored["num_response_tokens"])
        if stage_tokens != [naive["tokens"][i] for i in rows[k]] or any(scored["truncated"]):
            raise SystemExit(
                f"K={k}: the stage and the naive loop scored different tokens (or a row was cut)"
            )
        diff = max(abs(a - b) for a, b in zip(scored["learnability"], best[k]["naive_scores"]))
        positions = sum(naive["positions"][i] for i in rows[k])
        naive_work = Work(body=positions, logits=positions, calls=len(rows[k]))
        results[k] = {
            "rows": len(rows[k]),
            "tokens": sum(stage_tokens),
            "stage": best[k]["stage"],
            "naive": best[k]["naive"],
            "work": best[k]["work"],
            "naive_work": naive_work,
            "diff": diff,
        }
    return results


# --------------------------------------------------------------------------------------------------
# Processes: the stage alone in fresh processes, 1 vs several


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_worker(args: argparse.Namespace, pool_dir: str, processes: int, threads: int) -> dict[str, Any]:
    """Score the saved pool in `processes` fresh processes of `threads` threads each; the fastest run."""
    out = os.path.join(pool_dir, f"result-{processes}x{threads}.json")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ACCELERATE_USE_CPU": "true", "PYTHONPATH": path}
    worker = [
        os.path.abspath(__file__), "--worker", pool_dir, out, "--threads", str(threads), "--dtype", args.dtype,
        "--batch-tokens", str(args.batch_tokens), "--max-length", str(args.max_length),
        "--repeats", str(args.repeats),
    ]  # fmt: skip
    if processes == 1:
        command = [sys.executable, *worker]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(free_port()), *worker,
        ]  # fmt: skip
    log(f"the stage in {processes} process(es) x {threads} thread(s)")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.exists(out):
        raise SystemExit(f"{processes} x {threads} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with open(out) as handle:
        return json.load(handle)


def worker(args: argparse.Namespace) -> None:
    """One rank of a `--processes` measurement: warm up, then time `score_learnability` on the pool."""
    from accelerate import PartialState
    from datasets import load_from_disk

    pool_dir, out = args.worker
    state = PartialState(cpu=True)
    pool = Dataset.from_list(load_from_disk(os.path.join(pool_dir, "pool")).to_list())  # in memory: no cache
    student = StudentConfig(dtype=args.dtype, batch_tokens=args.batch_tokens, max_length=args.max_length)
    model, tokenizer = load_student(student)
    warm = warm_pool(pool, 2 * state.num_processes)
    score_learnability(warm, student, model=model, tokenizer=tokenizer)
    best = float("inf")
    for _ in range(args.repeats):
        state.wait_for_everyone()
        started = time.perf_counter()
        scored = score_learnability(pool, student, model=model, tokenizer=tokenizer)  # ends gathered
        best = min(best, time.perf_counter() - started)
    if state.is_main_process:
        tokens = sum(n or 0 for n in scored["num_response_tokens"])
        with open(out, "w") as handle:
            json.dump(
                {"seconds": best, "tokens": tokens, "learnability": list(scored["learnability"])}, handle
            )


def scaling(args: argparse.Namespace, pool: Dataset, tokens: list[int], k: int) -> None:
    """1 process at 1 thread, 1 process at p threads and p processes at 1 thread, for each p > 1."""
    counts = sorted({int(p) for p in args.processes.split(",")} | {1})
    with tempfile.TemporaryDirectory(prefix="bench-learnability-") as pool_dir:
        pool.save_to_disk(os.path.join(pool_dir, "pool"))
        single = run_worker(args, pool_dir, 1, 1)
        print(
            f"processes (the stage alone on the K={k} pool: {len(pool)} rows, {single['tokens']} response tokens):"
        )
        print(f"  1 process  x 1 thread : {single['tokens'] / single['seconds']:8.1f} tok/s")
        for p in counts[1:]:
            threaded = run_worker(args, pool_dir, 1, p)
            spread = run_worker(args, pool_dir, p, 1)
            diff = max(
                abs(a - b)
                for a, b in zip(spread["learnability"], single["learnability"])
                if a is not None and b is not None
            )
            shards = [len(part) for part in np.array_split(np.arange(len(pool)), p)]
            shard_tokens = np.split(np.array(tokens), np.cumsum(shards)[:-1])
            rate_threads = threaded["tokens"] / threaded["seconds"]
            rate_spread = spread["tokens"] / spread["seconds"]
            rate_single = single["tokens"] / single["seconds"]
            print(f"  1 process  x {p} threads: {rate_threads:8.1f} tok/s")
            print(
                f"  {p} processes x 1 thread : {rate_spread:8.1f} tok/s (shards of "
                f"{'/'.join(str(int(s.sum())) for s in shard_tokens)} response tokens; max |diff| vs 1 process "
                f"{diff:.1e})"
            )
            print(
                f"  scaling efficiency with {p} processes: {rate_spread / (p * rate_single):.3f} of {p} x 1 thread, "
                f"{rate_spread / rate_threads:.3f} of 1 process with {p} threads"
            )


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--teachers", default="2,4,8", help="teachers per prompt (K), comma-separated")
    parser.add_argument("--report-teachers", type=int, default=4, help="the K of the last line")
    parser.add_argument("--min-tokens", type=int, default=100, help="shortest answer, student tokens")
    parser.add_argument("--max-tokens", type=int, default=2000, help="longest answer, student tokens")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=StudentConfig.batch_tokens)
    parser.add_argument("--max-length", type=int, default=4096, help="student max_length (no row is cut)")
    parser.add_argument("--repeats", type=int, default=1, help="time each side N times, keep the fastest")
    parser.add_argument("--processes", default="", help="e.g. 1,2: also time the stage in 1 vs 2 processes")
    parser.add_argument("--processes-only", action="store_true", help="skip the stage vs naive comparison")
    parser.add_argument("--worker", nargs=2, metavar=("POOL_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    disable_progress_bars()  # the run logs its steps on stderr; bars would interleave with them
    if args.worker:
        worker(args)
        return

    ks = sorted({int(k) for k in args.teachers.split(",")})
    report = args.report_teachers if args.report_teachers in ks else ks[-1]
    student = StudentConfig(dtype=args.dtype, batch_tokens=args.batch_tokens, max_length=args.max_length)
    model, tokenizer = load_student(student)
    log(f"building the pool: {args.prompts} prompts x {ks[-1]} teachers")
    pool = build_pool(tokenizer, args.prompts, ks[-1], args.min_tokens, args.max_tokens)
    lengths = response_lengths(tokenizer, pool)
    print(
        f"pool: {args.prompts} gsm_symbolic prompts (reasoning-gym, seed 0) x up to {ks[-1]} teachers; answers "
        f"drawn uniformly from {args.min_tokens}-{args.max_tokens} tokens: response tokens min/median/max "
        f"{min(lengths)}/{statistics.median(lengths):.0f}/{max(lengths)} over {len(pool)} rows"
    )
    inp, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    body_params = sum(p.numel() for p in model.parameters() if p is not inp and p is not out)
    hidden, vocab = int(model.config.hidden_size), int(model.config.vocab_size)
    print(
        f"machine: cpu capability {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}, "
        f"dtype {args.dtype}; SmolLM2-135M: body {body_params / 1e6:.1f}M parameters, output layer "
        f"{hidden} x {vocab}; batch_tokens {args.batch_tokens}"
    )
    if not args.processes_only:
        warm = warm_pool(pool, 2)  # warm-up, both sides
        score_learnability(warm, student, model=model, tokenizer=tokenizer)
        naive_rows(model, tokenizer, warm, args.max_length)
        results = compare(args, model, tokenizer, pool, ks)
        peak = matmul_flops(model.dtype)
        print(
            f"dense matmul peak ({args.dtype}, {torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s"
        )
        print(
            "   K  rows  response tokens  stage tok/s  naive tok/s  speedup  roofline  max|diff|"
            "   stage work (body / logits positions)  naive work"
        )
        for k, result in results.items():
            work, naive_work, stage, naive = (
                result["work"],
                result["naive_work"],
                result["stage"],
                result["naive"],
            )
            result["roofline"] = work.flops(body_params, hidden, vocab) / stage / peak
            print(
                f"{k:>4}  {result['rows']:>4}  {result['tokens']:>15,}  {result['tokens'] / stage:>11.1f}  "
                f"{result['tokens'] / naive:>11.1f}  {naive / stage:>6.2f}x  {result['roofline']:>8.3f}  "
                f"{result['diff']:>9.1e}   {work.body:>9,} / {work.logits:>9,} ({work.calls} calls)  "
                f"{naive_work.body:,} / {naive_work.logits:,}"
            )
        reported = results[report]
        flops = reported["work"].flops(body_params, hidden, vocab)
        naive_flops = reported["naive_work"].flops(body_params, hidden, vocab)
        print(
            f"K={report}: the stage computed {flops / 1e12:.2f} TFLOP in {reported['stage']:.1f} s "
            f"({flops / reported['stage'] / 1e9:.1f} GFLOP/s), the naive loop {naive_flops / 1e12:.2f} TFLOP "
            f"in {reported['naive']:.1f} s ({naive_flops / reported['naive'] / 1e9:.1f} GFLOP/s)"
        )
    if args.processes:
        rows = first_teachers(pool, report)
        scaling(args, pool.select(rows), [lengths[i] for i in rows], report)
    if not args.processes_only:
        bad = {k: result["diff"] for k, result in results.items() if result["diff"] > 1e-4}
        if bad:
            raise SystemExit(f"MISMATCH: the stage and the naive loop differ by {bad} (> 1e-4)")
        print(
            f"speedup_vs_naive={reported['naive'] / reported['stage']:.2f} "
            f"roofline_fraction={reported['roofline']:.3f} max_abs_diff={reported['diff']:.2e}"
        )


if __name__ == "__main__":
    main()
