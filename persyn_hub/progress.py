"""Progress that moves: a bar advanced per scored batch or generated row, with a rate and an ETA, while
`datasets`' own per-map-call bar is hidden (it would sit at 0 for the whole stage)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars, tqdm


@contextmanager
def progress_bar(total: int, desc: str, unit: str, show: bool = True) -> Iterator[Any]:
    """A tqdm bar (rate, ETA) that a stage advances after every model batch or answered row.

    `datasets`' own map bar moves once per map batch, and one map batch can hold a whole pool (it sat at
    0/160 for minutes), so it is hidden while this bar runs and restored after. `show=False` (a process
    other than the local main one) hides both. Nothing is shown when `datasets`' bars are disabled.
    """
    if are_progress_bars_disabled():
        yield tqdm(total=total, disable=True)
        return
    with tqdm(total=total, desc=desc, unit=unit, disable=not show, dynamic_ncols=True) as bar:
        disable_progress_bars()
        try:
            yield bar
        finally:
            enable_progress_bars()
