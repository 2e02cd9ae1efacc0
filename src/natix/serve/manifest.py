"""The bundle manifest: format, schema, digest, and reading a bundle's files with every hash checked.

``manifest.json`` is strict JSON written by :mod:`natix.jsonio` (a router threshold of inf is the
string ``"inf"``). Its digest is the sha256 of its canonical JSON (:func:`natix.jsonio.canonical`)
without the digest field, so an edited manifest is refused; every other file of the bundle is
listed with its sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from natix import jsonio
from natix.errors import DataError

__all__ = ["DIGEST_KEY", "FORMAT", "MANIFEST", "as_threshold", "check_fields", "digest", "is_bundle", "manifest_bytes",
           "read_manifest", "sha256", "thresholds"]

FORMAT = "natix-bundle/1"
MANIFEST = "manifest.json"
DIGEST_KEY = "manifest_sha256"

_FIELDS = {"prior": (int, float), "stages": list, "files": dict}
_STAGE_FIELDS = {"backbone": dict, "extractor_version": int, "recipe": dict, "preprocess": dict, "pool": str,
                 "precision": str, "store_dtype": str, "head": dict, "head_file": str,
                 "calibration": (dict, type(None)), "thresholds": (dict, type(None))}
_ROUTER_FIELDS = {"mode": str, "thresholds": list, "confidence": list}
_BACKBONE_FIELDS = {"spec": str, "checkpoint": (str, type(None)), "adapter": (str, type(None)),
                    "weights_sha256": str, "adapter_sha256": (str, type(None)), "identity": dict}
_REEXPORT = "re-export the bundle with this natix"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(manifest: dict) -> str:
    """The manifest's own digest: sha256 of its canonical JSON without the digest field."""
    return sha256(jsonio.canonical({k: v for k, v in manifest.items() if k != DIGEST_KEY}))


def manifest_bytes(manifest: dict) -> bytes:
    """manifest.json's content: `manifest` with its digest added, as strict JSON."""
    return (jsonio.dumps({**manifest, DIGEST_KEY: digest(manifest)}) + "\n").encode()


def is_bundle(path: Path) -> bool:
    """Whether `path` holds a manifest of some natix bundle format (any version)."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("format", "").startswith("natix-bundle/")
    except (OSError, ValueError, AttributeError):
        return False


def _strict(constant: str):
    raise ValueError(f"{constant} is not JSON")


def read_manifest(path: Path) -> tuple[dict, dict[str, bytes]]:
    """The manifest of bundle directory `path` and the bytes of every file it lists, all hashes
    verified; a one-line `DataError` naming the file otherwise."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise DataError(f"'{path}' is not a natix bundle (no {MANIFEST}): pass a directory written by natix export")
    try:
        manifest = json.loads(mpath.read_bytes(), parse_constant=_strict)
    except ValueError as exc:
        raise DataError(f"bundle file {MANIFEST} is not valid JSON ({exc}): re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"bundle file {MANIFEST} has format {found!r}, not {FORMAT}: {_REEXPORT}")
    if manifest.get(DIGEST_KEY) != digest(manifest):
        raise DataError(f"bundle file {MANIFEST} was altered (its digest does not match its content): re-export "
                        "the bundle")
    check_fields(manifest)
    return manifest, {name: _read_file(path, name, want) for name, want in manifest["files"].items()}


def _read_file(path: Path, name: str, want: str) -> bytes:
    """The bytes of bundle file `name`, whose sha256 must be `want`."""
    if Path(name).name != name or name in ("", ".", "..", MANIFEST):
        raise DataError(f"bundle file name '{name}' is not a plain file name: re-export the bundle")
    try:
        data = (path / name).read_bytes()
    except FileNotFoundError:
        raise DataError(f"bundle file {name} is missing: re-export the bundle or restore the file") from None
    except OSError as exc:
        raise DataError(f"bundle file {name} is unreadable ({exc.strerror or exc}): check its permissions") from None
    got = sha256(data)
    if got != want:
        raise DataError(f"bundle file {name} was altered (sha256 {got[:12]}, the manifest says {want[:12]}): "
                        "re-export the bundle or restore the file")
    return data


def _check(obj: dict, fields: dict, where: str) -> None:
    for key, kind in fields.items():
        if not isinstance(obj.get(key), kind):
            raise DataError(f"bundle file {MANIFEST} has no valid {where}{key}: {_REEXPORT}")


def check_fields(manifest: dict) -> None:
    """Refuse a manifest (with a valid digest) that lacks a field this natix reads."""
    _check(manifest, _FIELDS, "")
    stages = manifest["stages"]
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise DataError(f"bundle file {MANIFEST} has no valid stages[{i}]: {_REEXPORT}")
        if "external" in stage:
            if i == 0 or i != len(stages) - 1 or not isinstance(stage["external"], str):
                raise DataError(f"bundle file {MANIFEST} has an invalid external stages[{i}] (only the last stage "
                                "may be external, as 'module:function'): re-export the bundle")
            continue
        _check(stage, _STAGE_FIELDS, f"stages[{i}].")
        _check(stage["backbone"], _BACKBONE_FIELDS, f"stages[{i}].backbone.")
        if stage["head_file"] not in manifest["files"]:
            raise DataError(f"bundle file {MANIFEST} does not list the head file {stage['head_file']}: re-export the bundle")
    if len(stages) > 1 or "router" in manifest:
        router = manifest.get("router")
        _check(router if isinstance(router, dict) else {}, _ROUTER_FIELDS, "router.")
        n_runs = sum("external" not in st for st in stages)
        if len(router["thresholds"]) != len(stages) - 1 or len(router["confidence"]) != n_runs:
            raise DataError(f"bundle file {MANIFEST} has {len(router['thresholds'])} router thresholds and "
                            f"{len(router['confidence'])} confidences for {len(stages)} stages: re-export the bundle")
        bad = [t for t in router["thresholds"] if as_threshold(t) is None]
        if bad:
            raise DataError(f"bundle file {MANIFEST} has router threshold {bad[0]!r}, not a number: re-export the bundle")


def as_threshold(value) -> float | None:
    """A router threshold as jsonio writes it (a number, "inf" or "-inf") as a float; None for
    anything else, NaN included."""
    try:
        t = jsonio.number(value)
    except DataError:
        return None
    return None if math.isnan(t) else t


def thresholds(manifest: dict) -> list[float] | None:
    """The router thresholds of a checked manifest as floats ("inf" → inf); None without a router."""
    router = manifest.get("router")
    return None if router is None else [as_threshold(t) for t in router["thresholds"]]
