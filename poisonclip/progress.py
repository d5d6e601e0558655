"""Progress bars that stay readable where their output is not a terminal.

tqdm redraws a bar with a carriage return up to ten times a second. In a terminal that is one line;
written to a log file, a pipe or a CI log it is thousands of updates. There, bars update at most
every ``NON_TTY_INTERVAL`` seconds (and once at the end): a few lines per hour-long run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

NON_TTY_INTERVAL = 60.0  # seconds between updates of a bar that is not drawn in a terminal


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, updating rarely when its output is not a terminal (the notebook
    bar, a widget, is left as it is)."""
    stream = kwargs.get("file") or sys.stderr
    is_terminal = getattr(stream, "isatty", lambda: False)()
    if not is_terminal and "notebook" not in tqdm.__module__:
        kwargs.setdefault("mininterval", NON_TTY_INTERVAL)
    return tqdm(iterable, **kwargs)
