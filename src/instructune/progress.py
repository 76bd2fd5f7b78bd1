"""Progress of long phases (generation, scoring, validation), so that no step is silent.

In a terminal a phase shows a tqdm bar on stderr (examples, rate, ETA) once it has lasted 2 s.
Piped or captured output gets no bar (its carriage-return redraws make a log unreadable): a plain
status line, `score: 48/300 examples, 12 s`, goes to stderr whenever nothing has been printed here
for STATUS_EVERY seconds, checked after each batch and, for a batch that takes longer, every
second by a watcher thread, so a log never stays quiet for long.

    with Progress(len(items), "score") as bar:
        for batch in ...:
            bar.update(len(batch))
"""

from __future__ import annotations

import sys
import threading
import time

from tqdm import tqdm

STATUS_EVERY = 5.0
"""Seconds without output after which a phase outside a terminal prints a status line."""
_last_output = [time.monotonic()]  # when a line was last printed here: the status lines' clock
_lock = threading.Lock()  # the watcher and the phase's own thread may both find a line due


def say(line: str) -> None:
    """Print `line` to stdout above any live progress bar (the bar is redrawn below it)."""
    tqdm.write(line, file=sys.stdout)
    _last_output[0] = time.monotonic()


def status(line: str) -> None:
    """A progress line on stderr, where bars go (stdout keeps a command's own output), above a live bar."""
    tqdm.write(line, file=sys.stderr)
    _last_output[0] = time.monotonic()


def in_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """`total` units of work named `desc`: a bar in a terminal, status lines elsewhere."""

    def __init__(self, total: int, desc: str, unit: str = "examples") -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.start = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit="ex" if unit == "examples" else unit, leave=False,
                        mininterval=1.0, delay=2.0, file=sys.stderr, dynamic_ncols=True) if in_terminal() else None
        self.stop = threading.Event()
        self.watcher = None
        if self.bar is None and STATUS_EVERY > 0:  # one batch may outlast STATUS_EVERY: a thread keeps watch
            self.watcher = threading.Thread(target=self._watch, daemon=True)
            self.watcher.start()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            self._status_if_quiet()

    def _watch(self) -> None:
        while not self.stop.wait(1.0):
            self._status_if_quiet()

    def _status_if_quiet(self) -> None:
        with _lock:
            if time.monotonic() - _last_output[0] >= STATUS_EVERY:
                status(f"{self.desc}: {self.done}/{self.total} {self.unit}, {time.monotonic() - self.start:.0f} s")

    def close(self) -> None:
        self.stop.set()
        if self.watcher is not None:
            self.watcher.join()
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
