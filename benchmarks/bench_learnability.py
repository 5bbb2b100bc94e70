"""Benchmark: the learnability stage vs a naive per-row HF loop, on real ASDiv prompts.

Both score the same rows with the same model and dtype. The naive loop runs one row at a time, a full
forward with logits at every position and a full log_softmax over the vocabulary; the stage packs
length-sorted rows under a token budget, asks the model for logits at response positions only and
takes the target token's log-probability with logsumexp + gather. The script checks both agree, then
reports tokens/s, the speedup, and the stage's share of this machine's dense matmul FLOP/s
(2 x parameters x tokens / time, against a timed torch.matmul).

    python benchmarks/bench_learnability.py              # 64 prompts x 2 responses, float32, ~1-2 min
    python benchmarks/bench_learnability.py --prompts 16 --dtype bfloat16 --threads 2

Last line: `speedup_vs_naive=X roofline_fraction=Y max_abs_diff=Z`.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from datasets import Dataset

from persyn_hub.config import PromptsConfig, StudentConfig
from persyn_hub.data import load_prompts
from persyn_hub.learnability import load_student, score_learnability, tokenize_for_student


def build_pool(num_prompts: int) -> Dataset:
    """Real ASDiv prompts, each answered twice: a worked answer and a short (often wrong) one."""
    prompts = load_prompts(
        PromptsConfig(source="bundled:asdiv", num_prompts=num_prompts, drop_duplicates=True), seed=0
    )
    rows = []
    for row in prompts:
        question = row["prompt"]
        worked = (
            f"Let's solve this step by step. We are told: {question.strip()} "
            f"Reading the numbers carefully and combining them, the result is {row['answer']}. "
            f"So the final answer is {row['answer']}."
        )
        rows.append({**row, "teacher": "worked", "response": worked, "error": None})
        rows.append({**row, "teacher": "short", "response": "The answer is 12.", "error": None})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=StudentConfig.batch_tokens)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    student = StudentConfig(dtype=args.dtype, batch_tokens=args.batch_tokens)
    model, tokenizer = load_student(student)
    pool = build_pool(args.prompts)
    score_learnability(pool.select(range(4)), student, model=model, tokenizer=tokenizer)  # warm-up

    started = time.perf_counter()
    scored = score_learnability(pool, student, model=model, tokenizer=tokenizer)
    ours_seconds = time.perf_counter() - started
    naive_started = time.perf_counter()
    naive, tokens = naive_scores(model, tokenizer, pool)
    naive_seconds = time.perf_counter() - naive_started

    diff = max(abs(a - b) for a, b in zip(scored["learnability"], naive))
    peak = matmul_flops(model.dtype)
    params = model.num_parameters()
    fraction = 2 * params * tokens / ours_seconds / peak
    print(f"rows={len(pool)} tokens={tokens} dtype={args.dtype} threads={args.threads} params={params}")
    print(f"stage: {ours_seconds:.2f} s, {tokens / ours_seconds:.0f} tokens/s")
    print(f"naive: {naive_seconds:.2f} s, {tokens / naive_seconds:.0f} tokens/s")
    print(
        f"matmul peak: {peak / 1e9:.1f} GFLOP/s; stage achieves {2 * params * tokens / ours_seconds / 1e9:.1f} GFLOP/s"
    )
    if diff > 1e-4:
        raise SystemExit(f"MISMATCH: the stage and the naive loop differ by {diff:.2e} (> 1e-4)")
    print(
        f"speedup_vs_naive={naive_seconds / ours_seconds:.2f} roofline_fraction={fraction:.3f} max_abs_diff={diff:.2e}"
    )


if __name__ == "__main__":
    main()
