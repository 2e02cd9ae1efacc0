"""natix.progress: a log line every few seconds when stderr is not a terminal, nothing when quiet."""

from __future__ import annotations

import io
import sys

import pytest

from natix import progress as P


@pytest.fixture(autouse=True)
def _normal():
    P.set_verbosity(P.NORMAL)
    yield
    P.set_verbosity(P.NORMAL)


class _Pipe(io.StringIO):
    def isatty(self) -> bool:
        return False


def test_a_log_gets_a_line_every_few_seconds_and_one_at_the_end(monkeypatch):
    err = _Pipe()
    monkeypatch.setattr(sys, "stderr", err)
    clock = iter(range(0, 1000, 4))  # 4 s per tick
    monkeypatch.setattr(P.time, "monotonic", lambda: next(clock))
    with P.Progress(10, "fit-head", "fold", every=10) as bar:
        for _ in range(10):
            bar.update(1)
    lines = err.getvalue().splitlines()
    assert 2 <= len(lines) <= 6  # every 10 s of a 40 s job, plus the final line; never one per update
    assert lines[-1].startswith("fit-head: 10/10 fold (100 %), ") and "fold/s" in lines[-1]


def test_quiet_and_disabled_say_nothing(monkeypatch):
    err = _Pipe()
    monkeypatch.setattr(sys, "stderr", err)
    P.set_verbosity(P.QUIET)
    with P.Progress(3, "x", every=0) as bar:
        bar.update(3)
    P.say("loading backbone")
    P.set_verbosity(P.NORMAL)
    with P.Progress(3, "x", enabled=False, every=0) as bar:
        bar.update(3)
    P.say("a detail", detail=True)
    assert err.getvalue() == ""
    P.say("loading backbone")
    P.set_verbosity(P.VERBOSE)
    P.say("a detail", detail=True)
    assert err.getvalue().splitlines() == ["loading backbone", "a detail"]


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    with P.Progress(4, "extract", "img") as bar:
        bar.n = 3  # set directly, as the job-wide bar of a torchrun job does
        bar.refresh()
        bar.update(1)
    assert "extract" in err.getvalue() and "4/4" in err.getvalue()
