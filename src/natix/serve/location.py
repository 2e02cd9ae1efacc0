"""Where a bundle's backbone files are: recorded at export, found again at load.

A bundle's backbone entry keeps the ``--backbone`` spec, ``--checkpoint`` and ``--adapter`` as
they were typed (``spec``, ``checkpoint``, ``adapter``). Those that name a local path at export
are also recorded under ``local``, per key, as ``{"absolute": PATH, "relative": PATH}`` (relative
to the bundle directory), so the bundle loads from any working directory, and after moving
together with its backbone. At load a recorded local path is looked for at its absolute place,
then relative to the bundle, and is never taken for a Hub id; found nowhere, it is a one-line
error naming the option that points at it. Bundles written before ``local`` existed use the
spec as typed.
"""

from __future__ import annotations

import os
from pathlib import Path

from natix.errors import BackboneError

__all__ = ["KEYS", "candidates", "record"]

KEYS = ("spec", "checkpoint", "adapter")  # the backbone entry's path fields, in load_backbone's order
_FIX = {"spec": "pass --backbone PATH (load_bundle(..., backbone=PATH))",
        "checkpoint": "pass --checkpoint FILE (load_bundle(..., checkpoint=FILE))",
        "adapter": "pass --adapter DIR (load_bundle(..., adapter=DIR))"}
_WHAT = {"spec": "backbone", "checkpoint": "backbone checkpoint", "adapter": "backbone adapter"}


def _local_part(key: str, typed: str | None) -> tuple[str, str] | None:
    """``(prefix, path)`` of the local path inside the typed value of `key` (see `spec_path`)."""
    from natix.extract.backbones import spec_path

    if not typed:
        return None
    return spec_path(typed) if key == "spec" else ("", typed)


def record(typed: dict, out: Path) -> dict:
    """The ``local`` entry for the typed values ``{spec, checkpoint, adapter}`` of a bundle written
    to `out`: per key, where its local path is (absolute, and relative to `out`), or None for a
    value that names no existing path (a Hub id, a timm name, nothing)."""
    local = {}
    for key in KEYS:
        part = _local_part(key, typed.get(key))
        path = None if part is None else Path(part[1]).expanduser()
        local[key] = None if path is None or not path.exists() else _location(path.resolve(), out)
    return local


def _location(absolute: Path, out: Path) -> dict:
    try:
        relative = Path(os.path.relpath(absolute, out.resolve())).as_posix()
    except ValueError:  # on another drive than the bundle: no relative path
        relative = None
    return {"absolute": str(absolute), "relative": relative}


def candidates(entry: dict, root: Path, key: str, given: str | None) -> list[str | None]:
    """What to pass `load_backbone` for `key` of backbone entry `entry` of the bundle at `root`.

    The caller's `given` path first and only; else the recorded local path where it exists
    (absolute, then relative to the bundle), with the spec's prefix; else the value as typed.
    Raises `BackboneError` naming the places looked at when a recorded local path is in neither.
    """
    if given:
        return [given]
    typed = entry[key]
    local = (entry.get("local") or {}).get(key)
    if local is None:
        return [typed]
    places = [Path(local["absolute"])]
    if local["relative"] is not None:
        places.append(root / local["relative"])
    found = list(dict.fromkeys(str(p) for p in places if p.exists()))
    if not found:
        where = " nor at ".join(f"'{p}'" for p in places)
        raise BackboneError(f"the bundle's {_WHAT[key]} '{typed}' is not at {where}: {_FIX[key]}")
    prefix = _local_part(key, typed)[0]
    return [prefix + path for path in found]
