"""The dependency rules of DESIGN §3, checked for every module of natix.

Two checks, because an import can hide in two places:

* statically: every ``import`` statement of a module, at any depth (inside functions too), and
  transitively through the modules it names;
* dynamically: each module imported in a fresh interpreter (a forked child of one that has
  loaded only unconstrained third-party libraries), with ``sys.modules`` read afterwards.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
TIER1 = ("natix.extract", "natix.data")
TIER2 = ("natix.heads", "natix.calibrate", "natix.cascade")
JOINERS = ("natix.serve", "natix.finetune", "natix.cli", "natix.__main__")  # __main__: `python -m natix`
BACKBONE_LIBS = ("transformers", "timm", "peft")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "natix").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every module named by an import statement in `path` (relative ones resolved): at any depth,
    or only those that run when the module is imported (`top_level_only`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree)
    if top_level_only:
        nodes = [n for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(stmt)]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return found


DIRECT = {name: _imports(name, path) for name, path in MODULES.items()}
ON_IMPORT = {name: _imports(name, path, top_level_only=True) for name, path in MODULES.items()}


def _is_package(name: str) -> bool:
    return name in MODULES and MODULES[name].name == "__init__.py"


def _closure(name: str) -> set[str]:
    """Modules `name` may import, following natix modules transitively.

    A module's imports at any depth are followed (its functions may run); of a package's
    ``__init__`` (and of the parents every import loads) only what runs on import.
    """
    seen, todo = set(), [(name, False)]
    while todo:
        mod, whole = todo.pop()
        for dep in (DIRECT if whole or mod == name else ON_IMPORT).get(mod, ()):
            parents = [dep.rsplit(".", k)[0] for k in range(1, dep.count(".") + 1)]
            for m, follow_all in [(dep, not _is_package(dep)), *((p, False) for p in parents)]:
                if (m, follow_all) not in seen:
                    seen.add((m, follow_all))
                    if m in MODULES:
                        todo.append((m, follow_all))
    return {m for m, _ in seen}


def _under(mod: str, roots) -> bool:
    return any(mod == r or mod.startswith(r + ".") for r in roots)


def _violations(name: str, imported: set[str]) -> list[str]:
    """What `name` may not import, among `imported`."""
    bad = []
    natix = {m for m in imported if m.startswith("natix.")}
    if _under(name, ("natix.metrics",)):
        bad += [f"metrics imports {m}" for m in natix if not _under(m, ("natix.metrics",))]
    if _under(name, ("natix.cache",)):
        bad += [f"cache imports {m}" for m in imported if _under(m, ("natix.extract", *BACKBONE_LIBS))]
    if _under(name, TIER2):
        bad += [f"tier 2 imports {m}" for m in imported if _under(m, ("natix.extract", *BACKBONE_LIBS))]
    if _under(name, ("natix.calibrate",)):
        bad += [f"calibrate imports {m}" for m in natix if _under(m, ("natix.heads",))]
    if not _under(name, JOINERS) and name != "natix":  # the root only names natix.load_bundle, lazily
        bad += [f"imports the joiner {m}" for m in natix if _under(m, JOINERS)]
    if _under(name, TIER1):
        bad += [f"tier 1 imports tier 2 {m}" for m in natix if _under(m, TIER2)]
    if not _under(name, ("natix.cli", "natix.__main__")):
        bad += [f"imports {m}" for m in natix if _under(m, ("natix.cli",))]
    return sorted(set(bad))


# Every top-level part of natix and the rule group it falls under. A new package or module must be
# placed here on purpose (which rules bind it), so none escapes the checks by being new.
PLACED = {
    "natix": "root", "natix.cli": "joiner", "natix.serve": "joiner", "natix.finetune": "joiner", "natix.__main__": "joiner",
    "natix.extract": "tier 1", "natix.data": "tier 1",
    "natix.heads": "tier 2", "natix.calibrate": "tier 2", "natix.cascade": "tier 2",
    "natix.cache": "shared", "natix.metrics": "shared", "natix.rundir": "shared", "natix.jsonio": "shared",
    "natix.registry": "shared", "natix.config": "shared", "natix.errors": "shared", "natix.distributed": "shared",
    "natix.progress": "shared",
}


def test_every_top_level_part_is_placed_under_the_rules():
    top = {".".join(name.split(".")[:2]) for name in MODULES}
    assert top == set(PLACED)
    for name, group in PLACED.items():
        if group == "tier 2":
            assert _violations(name + ".x", {"natix.extract"}), name
        elif group == "tier 1":
            assert _violations(name + ".x", {"natix.heads"}), name
        elif group == "shared" and name != "natix.metrics":
            assert _violations(name, {"natix.serve"}), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_static_imports_follow_the_rules(name):
    assert _violations(name, _closure(name)) == []


_CHILD = r"""
import json, os, sys
names = json.loads(sys.argv[1])
# Third-party libraries the rules do not constrain load once, before the forks, so each child only
# imports natix; the backbone libraries (transformers, timm, peft) stay out, since rules name them.
import numpy, scipy.stats, sklearn.base, torch, h5py, safetensors.numpy, click  # noqa: F401,E401
out = {}
for name in names:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        import importlib
        importlib.import_module(name)
        os.write(w, json.dumps(sorted(sys.modules)).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    out[name] = json.loads(data) if status == 0 else None
print(json.dumps(out))
"""


def test_fresh_interpreter_imports_follow_the_rules():
    names = sorted(MODULES)
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(names)], capture_output=True, text=True,
                         check=True, cwd=SRC)
    loaded = json.loads(res.stdout)
    failed = [n for n, mods in loaded.items() if mods is None]
    assert failed == [], f"modules that do not import on their own: {failed}"
    bad = {n: v for n in names if (v := _violations(n, set(loaded[n])))}
    assert bad == {}


def test_the_checker_sees_a_function_local_import(tmp_path):
    code = "def f():\n    from natix.extract import backbones\n"
    path = tmp_path / "m.py"
    path.write_text(code)
    assert "natix.extract" in _imports("natix.heads.m", path)
    assert _violations("natix.heads.m", {"natix.extract.backbones"}) == ["tier 2 imports natix.extract.backbones"]
    assert _violations("natix.calibrate.m", {"natix.heads.runs"}) == ["calibrate imports natix.heads.runs"]
    assert _violations("natix.metrics.x", {"natix.errors"}) == ["metrics imports natix.errors"]
