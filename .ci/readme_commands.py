"""Print the README's own commands, so CI runs them as written (a green CI cannot hide a missing step).

`install`: the first line of the quick start's block (the install command).
`tests`: every line of the block that runs pytest (the server the tests use, then the tests).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def bash_blocks(text: str) -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    return [[line for line in block.splitlines() if line.strip()] for block in blocks]


def commands(which: str) -> list[str]:
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    if which == "install":
        return blocks[0][:1]
    if which == "tests":
        return next(block for block in blocks if any("pytest" in line for line in block))
    raise SystemExit(f"unknown block {which!r}: install or tests")


if __name__ == "__main__":
    print("\n".join(commands(sys.argv[1])))
