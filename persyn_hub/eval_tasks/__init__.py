"""lm-evaluation-harness tasks for the bundled evaluation data (found via `TaskManager(include_path=...)`).

- `persyn_asdiv`: held-out ASDiv math word problems, exact final answer (math-verify), generate_until.
- `persyn_ifbench`: held-out IFBench prompts, verifiable instruction checks (if-verifiable), strict mode.
- `persyn_taskmix`: held-out items of the default recipe's reasoning-gym task mix, each task's own checker.

The held-out split is in `heldout.py`: a prompt is held out when a hash of its text says so, so the
split is the same on every machine and in every run, and training data can be filtered by the same rule.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
TASK_NAMES = ("persyn_asdiv", "persyn_ifbench", "persyn_taskmix")
