"""The fine-tuning part of `make demo`, run as the Makefile writes it: the adapted head must beat
the frozen one on val_test with a paired CI that excludes 0."""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = "--- fine-tuning the backbone"


def _demo_commands(demo: pathlib.Path) -> list[str]:
    """The Makefile's demo commands from the fine-tuning marker to the end of the target, with
    `$(BIN)/natix` as this interpreter's `-m natix` and `$(DEMO)` as `demo`."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if MARKER in line)
    commands = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        line = line.strip()
        if line.startswith("@echo"):
            continue
        line = line.replace("$(BIN)/natix", f"{shlex.quote(sys.executable)} -m natix")
        commands.append(line.replace("$(DEMO)", str(demo)).replace("$$", "$"))
    return commands


def test_make_demo_fine_tuning_beats_the_frozen_backbone(tmp_path):
    demo = tmp_path / "demo"
    setup = [sys.executable, "-m", "natix", "demo-backbone", str(demo / "backbone")]
    subprocess.run(setup, check=True, capture_output=True)
    commands = _demo_commands(demo)
    assert any(" finetune " in c for c in commands) and any(" ablate " in c for c in commands), commands
    for command in commands:
        r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, f"{command}\n{r.stdout}\n{r.stderr}"
    out = r.stdout
    assert "fine-tuned:linear/global/softmax" in out and "frozen:linear/global/softmax" in out
    caches = sorted((demo / "cache-large").glob("*.h5"))
    assert len(caches) == 2  # the frozen cache kept, the adapted one new
    board = json.loads((demo / "ablate-finetune" / "leaderboard.json").read_text())
    by = {row["cache"]: row for row in board["rows"]}
    tuned, frozen = by["fine-tuned"], by["frozen"]
    assert tuned["mcc"] > frozen["mcc"] + 0.3
    assert tuned["diff_ci"][0] > 0, tuned["diff_ci"]  # paired over the same val_test images
