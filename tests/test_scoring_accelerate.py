"""Scale-out: two CPU processes (accelerate PartialState over gloo) score shards; one ordered data set back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from datasets import Dataset, load_from_disk

from persyn_hub.recipe.config import StudentConfig
from persyn_hub.scoring.learnability.scorer import load_student, score_learnability

SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from accelerate import PartialState
    from datasets import load_from_disk

    from persyn_hub.recipe.config import StudentConfig
    from persyn_hub.scoring.learnability.scorer import score_learnability

    torch.set_num_threads(1)
    state = PartialState(cpu=True)
    pool = load_from_disk(sys.argv[1])
    scored = score_learnability(pool, StudentConfig(batch_tokens=512, dtype="float32"))
    assert len(scored) == len(pool), (len(scored), len(pool))
    if state.is_main_process:
        scored.save_to_disk(sys.argv[2])
    print(f"process {state.process_index}/{state.num_processes} done", flush=True)
    """
)


@pytest.mark.slow
def test_two_cpu_processes_match_in_process_scores(tmp_path, asdiv_prompts):
    rows = []
    for index, row in enumerate(asdiv_prompts.select(range(5))):
        base = {k: row[k] for k in ("prompt_id", "messages", "prompt", "answer")}
        rows.append({**base, "teacher": "a", "response": f"The answer is {row['answer']}.", "error": None})
        rows.append(
            {**base, "teacher": "b", "response": "I think " + "it is 7. " * (index + 1), "error": None}
        )
    rows[4] = {**rows[4], "response": None, "error": "failed"}
    pool = Dataset.from_list(rows)  # 10 rows: the two shards are rows 0-4 and 5-9
    pool.save_to_disk(str(tmp_path / "pool"))
    (tmp_path / "score.py").write_text(SCRIPT)
    import persyn_hub

    root = os.path.dirname(os.path.dirname(os.path.abspath(persyn_hub.__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": path}
    # `accelerate launch --cpu --num_processes 2` runs ONE process in accelerate 1.15 (its simple launcher);
    # torch's elastic launcher starts the two ranks, which accelerate's PartialState(cpu=True) joins (gloo).
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        str(tmp_path / "score.py"), str(tmp_path / "pool"), str(tmp_path / "out"),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "process 0/2 done" in done.stdout and "process 1/2 done" in done.stdout
    sharded = load_from_disk(str(tmp_path / "out"))

    model, tokenizer = load_student(StudentConfig(dtype="float32"))
    local = score_learnability(pool, StudentConfig(dtype="float32"), model=model, tokenizer=tokenizer)
    assert sharded["prompt_id"] == pool["prompt_id"] and sharded["teacher"] == pool["teacher"]
    assert sharded["num_response_tokens"] == local["num_response_tokens"]
    assert sharded["truncated"] == local["truncated"]
    for a, b in zip(sharded["learnability"], local["learnability"]):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-4)
    assert sharded["learnability"][4] is None
