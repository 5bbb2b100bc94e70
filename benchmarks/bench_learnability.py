"""Benchmark: the learnability stage vs a naive per-row HF loop, on real ASDiv prompts.

Both score the same rows with the same model and dtype. The naive loop runs one row at a time, a full
forward with logits at every position and a full log_softmax over the vocabulary. The stage encodes
each prompt once and scores its K teachers' responses from the cached prompt (the system turn all
prompts share once per batch), packed by response length under a token budget, with logits at
response positions only and the target token's log-probability taken with logsumexp + gather. The
script checks both agree (max |difference| of the mean log-probabilities <= 1e-4), then reports
tokens/s, the speedup, and the stage's share of this machine's dense matmul FLOP/s
(2 x parameters x tokens the model actually ran, padding included, / time, against a timed
torch.matmul).

The pool: `--prompts` ASDiv questions, each answered by K synthetic teachers (`--teachers`, default 4;
a PerSyn pool has one row per prompt and teacher). How much the stage gains grows with K, since the
prompt is encoded once for K rows, and shrinks as responses get long relative to prompts. The first
two teachers are the benchmark's original pool (a worked answer of ~80 tokens, a 9-token one); the
others add a one-line answer and a ~40-token checked answer (and, for K up to 6, two more). The pool
with `--compare-teachers` teachers (default 2; 0 skips it) is timed first and printed on its own line.

    python benchmarks/bench_learnability.py              # 64 prompts, K=2 then K=4, float32, ~5-8 min
    python benchmarks/bench_learnability.py --prompts 16 --compare-teachers 0 --repeats 3
    python benchmarks/bench_learnability.py --dtype bfloat16 --threads 2

Timings on a shared machine are noisy: `--repeats N` times stage and naive alternately N times and
keeps the fastest of each.
Last line (for `--teachers`): `speedup_vs_naive=X roofline_fraction=Y max_abs_diff=Z`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset

from persyn_hub.config import PromptsConfig, StudentConfig
from persyn_hub.data import load_prompts
from persyn_hub.learnability import load_student, score_learnability, tokenize_for_student

TEACHERS = (
    (
        "worked",
        lambda q, a: (
            f"Let's solve this step by step. We are told: {q} "
            f"Reading the numbers carefully and combining them, the result is {a}. "
            f"So the final answer is {a}."
        ),
    ),
    ("short", lambda q, a: "The answer is 12."),
    ("direct", lambda q, a: f"The answer is {a}."),
    (
        "checked",
        lambda q, a: (
            "To answer this, I identify the quantities given in the problem and the operation the question "
            f"asks for. Doing the arithmetic gives {a}. Checking it against the question, it is "
            f"consistent. Final answer: {a}."
        ),
    ),
    ("hedged", lambda q, a: f"I believe the answer is {a}, but please double-check the arithmetic."),
    ("restated", lambda q, a: f"Question: {q}\nAnswer: {a}"),
)


def build_pool(num_prompts: int, teachers: int = 2) -> Dataset:
    """Real ASDiv prompts, each answered by the first `teachers` synthetic teachers of `TEACHERS`."""
    if not 1 <= teachers <= len(TEACHERS):
        raise SystemExit(f"--teachers must be between 1 and {len(TEACHERS)}")
    prompts = load_prompts(
        PromptsConfig(source="bundled:asdiv", num_prompts=num_prompts, drop_duplicates=True), seed=0
    )
    rows = []
    for row in prompts:
        for name, answer in TEACHERS[:teachers]:
            response = answer(row["prompt"].strip(), row["answer"])
            rows.append({**row, "teacher": name, "response": response, "error": None})
    return Dataset.from_list(rows)


def naive_scores(model, tokenizer, pool: Dataset) -> tuple[list[float], int]:
    """One row at a time: full logits, full log_softmax, gather the response tokens, mean."""
    ids, starts = tokenize_for_student(tokenizer, pool["messages"], pool["response"])
    scores, tokens = [], 0
    with torch.no_grad():
        for row_ids, start in zip(ids, starts):
            input_ids = torch.tensor([row_ids])
            logprobs = F.log_softmax(model(input_ids).logits[0].float(), dim=-1)
            targets = input_ids[0, start:]
            scores.append(logprobs[torch.arange(start - 1, len(row_ids) - 1), targets].mean().item())
            tokens += len(row_ids)
    return scores, tokens


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


class TokenCounter:
    """Counts the input positions the model runs (padding included): the work actually done."""

    def __init__(self, model: Any) -> None:
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            self.tokens += input_ids.numel()


def measure(model, tokenizer, student: StudentConfig, pool: Dataset, repeats: int) -> dict[str, Any]:
    """Best-of-`repeats` times of the stage and the naive loop (alternating), their scores and tokens."""
    ours_seconds = naive_seconds = float("inf")
    for _ in range(repeats):
        counter = TokenCounter(model)
        started = time.perf_counter()
        scored = score_learnability(pool, student, model=model, tokenizer=tokenizer)
        ours_seconds = min(ours_seconds, time.perf_counter() - started)
        counter.handle.remove()
        started = time.perf_counter()
        naive, tokens = naive_scores(model, tokenizer, pool)
        naive_seconds = min(naive_seconds, time.perf_counter() - started)
    diff = max(abs(a - b) for a, b in zip(scored["learnability"], naive))
    return {
        "ours": ours_seconds,
        "naive": naive_seconds,
        "tokens": tokens,
        "forwarded": counter.tokens,
        "diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument(
        "--teachers", type=int, default=4, help="responses per prompt (K) of the reported pool"
    )
    parser.add_argument(
        "--compare-teachers", type=int, default=2, help="also time a pool with this K first (0: skip)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=StudentConfig.batch_tokens)
    parser.add_argument("--repeats", type=int, default=1, help="time each side N times, keep the fastest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    student = StudentConfig(dtype=args.dtype, batch_tokens=args.batch_tokens)
    model, tokenizer = load_student(student)
    params = model.num_parameters()
    warm = build_pool(2, 2)
    score_learnability(warm, student, model=model, tokenizer=tokenizer)  # warm-up, both sides
    naive_scores(model, tokenizer, warm)

    ks = [k for k in (args.compare_teachers, args.teachers) if k]
    results = {}
    for k in dict.fromkeys(ks):
        pool = build_pool(args.prompts, k)
        result = results[k] = measure(model, tokenizer, student, pool, args.repeats)
        tokens, ours, naive = result["tokens"], result["ours"], result["naive"]
        print(
            f"K={k} teachers: rows={len(pool)} tokens={tokens} (the stage ran {result['forwarded']} positions) "
            f"dtype={args.dtype} threads={args.threads} params={params}"
        )
        print(f"  stage: {ours:.2f} s, {tokens / ours:.0f} tokens/s")
        print(f"  naive: {naive:.2f} s, {tokens / naive:.0f} tokens/s")
        print(f"  K={k}: speedup_vs_naive={naive / ours:.2f} max_abs_diff={result['diff']:.2e}")
        if result["diff"] > 1e-4:
            raise SystemExit(
                f"MISMATCH: the stage and the naive loop differ by {result['diff']:.2e} (> 1e-4)"
            )

    peak = matmul_flops(model.dtype)
    result = results[args.teachers]
    achieved = 2 * params * result["forwarded"] / result["ours"]
    print(
        f"matmul peak: {peak / 1e9:.1f} GFLOP/s; at K={args.teachers} the stage runs {achieved / 1e9:.1f} GFLOP/s "
        f"({2 * params * result['tokens'] / result['ours'] / 1e9:.1f} GFLOP/s of full-row work avoided or done)"
    )
    print(
        f"speedup_vs_naive={result['naive'] / result['ours']:.2f} roofline_fraction={achieved / peak:.3f} "
        f"max_abs_diff={result['diff']:.2e}"
    )


if __name__ == "__main__":
    main()
