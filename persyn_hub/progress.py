"""Progress that moves: a bar advanced per scored batch or generated row, with a rate and an ETA, while
`datasets`' own per-map-call bar is hidden (it would sit at 0 for the whole stage).

Every advance of a bar also counts as this process's work progress (`WORK`), which a launch's
heartbeat publishes and watches (`pipeline/liveness.py`): a process whose main thread stops advancing
is named, with the frame it is blocked in, instead of being waited for until the cluster's time limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars, tqdm


@dataclass
class WorkProgress:
    """What this process's main thread is doing: its stage and how far it got there.

    Plain counters, bumped from the loops (no lock, no store call): the launch's heartbeat thread reads
    them every beat and publishes them.
    """

    stage: str = "start"
    done: int = 0
    """Advances in the current stage: batches, rows or tokens, whatever its loops count."""
    moves: int = 0
    """Every advance and stage change since the process started: what a stall is measured on."""
    waits: int = 0
    """Above 0 while the main thread waits for other processes: their progress counts then, not ours."""


WORK = WorkProgress()


def advance(count: int = 1) -> None:
    """Work moved on (a batch scored, rows generated, a model loaded): this process is not stalled."""
    WORK.done += count
    WORK.moves += 1


def enter_stage(name: str) -> None:
    """The main thread starts (or decides on) stage `name`; its progress counts from 0."""
    WORK.stage, WORK.done = name, 0
    WORK.moves += 1


@contextmanager
def waiting() -> Iterator[None]:
    """The main thread waits for other processes: no stall of its own while it does."""
    WORK.waits += 1
    WORK.moves += 1
    try:
        yield
    finally:
        WORK.waits -= 1
        WORK.moves += 1


def counted(bar: Any) -> Any:
    """`bar`, whose every update (shown or not) is also work progress."""
    update = bar.update

    def update_and_advance(n: float | None = 1) -> bool | None:
        advance(int(n or 0))
        return update(n)

    bar.update = update_and_advance
    return bar


@contextmanager
def progress_bar(total: int, desc: str, unit: str, show: bool = True) -> Iterator[Any]:
    """A tqdm bar (rate, ETA) that a stage advances after every model batch or answered row.

    `datasets`' own map bar moves once per map batch, and one map batch can hold a whole pool (it sat at
    0/160 for minutes), so it is hidden while this bar runs and restored after. `show=False` (a process
    other than the local main one) hides both. Nothing is shown when `datasets`' bars are disabled; the
    bar still counts as work progress.
    """
    if are_progress_bars_disabled():
        yield counted(tqdm(total=total, disable=True))
        return
    with counted(tqdm(total=total, desc=desc, unit=unit, disable=not show, dynamic_ncols=True)) as bar:
        disable_progress_bars()
        try:
            yield bar
        finally:
            enable_progress_bars()
