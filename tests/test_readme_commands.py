"""Every `natix` command in the README's bash blocks runs as written, in order, in one folder, on
the demo data. A line that cannot run here says so in its comment ("not run by the tests") with
the reason; torchrun lines must say which test runs them instead."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from click.testing import CliRunner

from natix.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = "not run by the tests"


def readme_lines() -> list[str]:
    """The command lines of the README's bash blocks (continuations joined), in order."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith(("natix ", "torchrun ")):
                out.append(line)
    return out


def _words(line: str, cwd: Path) -> list[str]:
    """The arguments a shell would pass for `line` (globs and quotes expanded by bash itself)."""
    command = line.split("  #")[0].strip()  # comments are separated by two spaces or more
    done = subprocess.run(["bash", "-c", f'set -- {command}; printf "%s\\0" "$@"'], cwd=cwd, capture_output=True,
                          text=True, check=True)
    return done.stdout.split("\0")[:-1]


def test_the_readme_commands_are_found_and_every_skipped_one_says_why():
    lines = readme_lines()
    assert len(lines) > 30
    for line in lines:
        if line.startswith("torchrun "):
            assert NOT_RUN in line, f"torchrun lines say which test runs them: {line}"
        if NOT_RUN in line:
            assert re.search(rf"{NOT_RUN}[^:)]*[:)]|\({NOT_RUN}", line), f"say why it is not run: {line}"


def test_every_readme_command_runs_on_the_demo_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NATIX_CACHE", raising=False)
    ran = 0
    for line in readme_lines():
        if NOT_RUN in line:
            continue
        words = _words(line, tmp_path)
        result = CliRunner().invoke(cli, words[1:])
        assert result.exit_code == 0, f"README command failed: {line}\n{result.output[-3000:]}"
        ran += 1
    assert ran > 25
