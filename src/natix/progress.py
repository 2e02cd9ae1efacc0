"""Feedback on long work, the same in every command: a bar, a log line, a word before a slow step.

* :func:`say` tells what is about to happen before a slow step ("hashing 120,000 files",
  "loading backbone ..."), on stderr.
* :class:`Progress` counts work: a tqdm bar on a terminal; when stderr is not a terminal (a log
  file, CI, ``nohup``) one line every `every` seconds and one at the end, so a long job is never
  silent and a log never fills with carriage returns.
* The verbosity is one setting for the process (:func:`set_verbosity`, from the CLI's ``-q`` and
  ``-v``): quiet shows neither, normal shows both, verbose adds :func:`say` lines marked as detail.

Library calls show the same feedback by default; pass ``progress=False`` where a function takes it,
or call ``set_verbosity(QUIET)``.
"""

from __future__ import annotations

import sys
import time

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level = NORMAL
# Seconds between two log lines of a Progress that is not given `every` (read when it starts); a test
# sets it to 0 to see a line per update.
EVERY = 10.0


def set_verbosity(level: int) -> None:
    """QUIET (0), NORMAL (1) or VERBOSE (2, or more) for the rest of the process."""
    global _level
    _level = max(QUIET, int(level))


def verbosity() -> int:
    return _level


def say(message: str, *, detail: bool = False) -> None:
    """`message` on stderr, unless quiet (or, for a `detail`, unless verbose)."""
    if _level >= (VERBOSE if detail else NORMAL):
        print(message, file=sys.stderr, flush=True)


def _count(n: float) -> str:
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.1f}"


class Progress:
    """Work done out of `total` `unit`s (a tqdm-like object: ``update``, ``n``, ``refresh``, ``close``).

    On a terminal a tqdm bar; otherwise a line ``desc: n/total unit (p %), r unit/s, t s`` at most
    every `every` seconds (default :data:`EVERY`) and at the end; nothing when quiet or not
    `enabled`. A `total` of None counts without one (``desc: n unit, r unit/s, t s``).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, enabled: bool = True,
                 every: float | None = None, initial: int = 0):
        self.total, self.desc, self.unit = total, desc, unit
        self.every = EVERY if every is None else every
        self.n = initial
        self._start = self._last = time.monotonic()
        self._initial = initial
        self._shown = None  # the count of the last log line: the final line does not repeat it
        self._bar = None
        self._log = enabled and _level >= NORMAL and not sys.stderr.isatty()
        if enabled and _level >= NORMAL and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, smoothing=0.1)
        self._closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        self.refresh()

    def refresh(self) -> None:
        """Show the current `n` (a bar redraws; a log writes a line when `every` seconds have passed)."""
        if self._bar is not None:
            self._bar.n = self.n
            self._bar.refresh()
        elif self._log and time.monotonic() - self._last >= self.every:
            self._line()

    def _line(self) -> None:
        self._last = now = time.monotonic()
        self._shown = self.n
        elapsed = now - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        of = f"/{_count(self.total)}" if self.total else ""
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        print(f"{self.desc}: {_count(self.n)}{of} {self.unit}{pct}, {rate:,.1f} {self.unit}/s, {elapsed:,.0f} s",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.n = self.n
            self._bar.close()
        elif self._log and self.n and self.n != self._shown:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["EVERY", "NORMAL", "Progress", "QUIET", "VERBOSE", "say", "set_verbosity", "verbosity"]
