"""What a bundle manifest may hold: every field's type and range, checked before anything is built.

A manifest's digest detects damage, not malice: whoever can write a bundle can recompute it
(signing, in :mod:`natix.serve.manifest`, answers that). So no field is trusted: each is checked
against the schema below and its range (a prior in [0, 1], known store dtypes, precisions and
poolings, hashes that are hashes, head shapes that match the view recipe, router thresholds that
are numbers or ±inf), unknown fields are refused, and an external stage is only a declaration
(``{"external": "module:function"}``) that :func:`natix.serve.bundle.load_bundle` imports when
its caller names it. Calibration maps are rebuilt and probed by :func:`served_calibration`.
Every refusal is one `DataError` line naming the field and the fix.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from natix import jsonio
from natix.config import POOLS, PRECISIONS, STORE_DTYPES
from natix.errors import DataError

__all__ = ["CONFIDENCES", "MANIFEST", "ROUTER_MODES", "SERVED_PRECISIONS", "as_threshold", "bad_field",
           "check_manifest", "external_spec", "is_external_spec", "served_calibration"]

MANIFEST = "manifest.json"
SERVED_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")  # what a cache records: the resolved one
ROUTER_MODES = ("certified", "budget")  # the modes of natix.cascade.router.Router
CONFIDENCES = ("max_prob", "gate")  # what a cascade routes on per run stage
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_EXTERNAL = re.compile(rf"^{_DOTTED}:{_DOTTED}$")
_FILE = re.compile(r"^[\w.-]+\.safetensors$")
# Probabilities a calibration map must send to finite values in [0, 1] without overflow.
_PROBE = np.concatenate([[0.0, 1e-12, 1e-6], np.linspace(0.01, 0.99, 99), [1 - 1e-6, 1 - 1e-12, 1.0]])

Check = Callable[[object], "str | None"]  # None when the value is valid, else why it is not


def bad_field(field: str, why: str) -> DataError:
    """The one-line refusal of manifest field `field`."""
    return DataError(f"bundle file {MANIFEST} has an invalid {field} ({why}): re-export the bundle with this natix")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(*types: type, what: str) -> Check:
    def check(v):
        ok = isinstance(v, types) and (bool in types or not isinstance(v, bool))
        return None if ok else f"{_show(v)} is not {what}"
    return check


def _optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def _one_of(values) -> Check:
    return lambda v: None if isinstance(v, str) and v in values else f"{_show(v)} is not one of {', '.join(values)}"


def _matches(pattern: re.Pattern, what: str) -> Check:
    return lambda v: None if isinstance(v, str) and pattern.match(v) else f"{_show(v)} is not {what}"


def _positive_int(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else f"{_show(v)} is not an int >= 1"


def _list_of(check: Check) -> Check:
    def each(v):
        if not isinstance(v, list):
            return f"{_show(v)} is not a list"
        return next((f"entry {i}: {why}" for i, x in enumerate(v) if (why := check(x))), None)
    return each


def _probability(v):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1
    return None if ok else f"{_show(v)} is not a probability in [0, 1]"


def _threshold(v):
    return None if as_threshold(v) is not None else f"{_show(v)} is not a number, 'inf' or '-inf'"


_TEXT = _kind(str, what="a string")
_INT = _kind(int, what="an int")
_OBJ = _kind(dict, what="an object")
_HASH = _matches(_HEX64, "a sha256 hex digest")
_TOP = {"format": _TEXT, "natix_version": _TEXT, "created": _TEXT, "stages": _kind(list, what="a list"),
        "prior": _probability, "files": _OBJ, "manifest_sha256": _HASH}
_TOP_OPTIONAL = {"source_run": _TEXT, "source_cascade": _TEXT, "source_runs": _list_of(_TEXT), "router": _OBJ,
                 "signature": _OBJ}
_STAGE = {"backbone": _OBJ, "extractor_version": _INT, "recipe": _OBJ, "preprocess": _OBJ, "pool": _one_of(POOLS),
          "precision": _one_of(SERVED_PRECISIONS), "store_dtype": _one_of(STORE_DTYPES), "cache_fingerprint": _TEXT,
          "head": _OBJ, "head_file": _matches(_FILE, "a .safetensors file name"), "calibration": _optional(_OBJ),
          "thresholds": _optional(_OBJ), "failure": _optional(_OBJ),
          "failure_file": _optional(_matches(_FILE, "a .safetensors file name"))}
_LOCATION = {"absolute": _TEXT, "relative": _optional(_TEXT)}
_BACKBONE = {"spec": _TEXT, "checkpoint": _optional(_TEXT), "adapter": _optional(_TEXT), "weights_sha256": _HASH,
             "adapter_sha256": _optional(_HASH), "identity": _OBJ}
_BACKBONE_OPTIONAL = {"local": _OBJ}  # where local paths were at export (absolute, relative to the bundle)
_HEAD = {"config": _OBJ, "dim": _positive_int, "n_views": _positive_int, "view_names": _optional(_list_of(_TEXT))}
_ROUTER = {"mode": _one_of(ROUTER_MODES), "thresholds": _list_of(_threshold),
           "confidence": _list_of(_one_of(CONFIDENCES))}
_SIGNATURE = {"alg": _one_of(("hmac-sha256",)), "value": _HASH}


def _fields(obj, where: str, required: dict[str, Check], optional: dict[str, Check] | None = None) -> None:
    """Refuse `obj` unless it is an object with the `required` fields, maybe the `optional` ones, all valid."""
    optional = optional or {}
    prefix = f"{where}." if where else ""
    if not isinstance(obj, dict):
        raise bad_field(where, f"{_show(obj)} is not an object")
    for key in obj:
        if key not in required and key not in optional:
            raise bad_field(f"{prefix}{key}", "a field this natix does not know")
    for key, check in {**required, **optional}.items():
        if key not in obj:
            if key in required:
                raise bad_field(f"{prefix}{key}", "missing")
            continue
        why = check(obj[key])
        if why:
            raise bad_field(f"{prefix}{key}", why)


def check_manifest(manifest: dict) -> None:
    """Refuse a manifest (its digest already checked) whose fields leave the schema or their ranges."""
    _fields(manifest, "", _TOP, _TOP_OPTIONAL)
    files = manifest["files"]
    for name, digest in files.items():
        if not _FILE.match(name) or _HASH(digest):
            raise bad_field("files", f"entry {_show(name)}: {_show(digest)} is not a .safetensors name and sha256")
    stages = manifest["stages"]
    if not stages:
        raise bad_field("stages", "no stages")
    for i, stage in enumerate(stages):
        if isinstance(stage, dict) and "external" in stage:
            _check_external(stage, i, len(stages))
        else:
            _check_stage(stage, f"stages[{i}]", files)
    if "signature" in manifest:
        _fields(manifest["signature"], "signature", _SIGNATURE)
    _check_router(manifest)


def _check_external(stage: dict, i: int, n: int) -> None:
    where = f"stages[{i}]"
    _fields(stage, where, {"external": _matches(_EXTERNAL, "'module:function'")})
    if i == 0 or i != n - 1:
        raise bad_field(f"{where}.external", "only the last stage of a cascade may be external")


def _check_stage(stage, where: str, files: dict) -> None:
    """One run stage: fields, backbone, head shapes against the recipe, files it names."""
    _fields(stage, where, _STAGE)
    backbone = stage["backbone"]
    _fields(backbone, f"{where}.backbone", _BACKBONE, _BACKBONE_OPTIONAL)
    _check_local(backbone.get("local"), f"{where}.backbone.local")
    identity = backbone["identity"]
    if identity.get("weights_sha256") != backbone["weights_sha256"] or identity.get("pool") != stage["pool"]:
        raise bad_field(f"{where}.backbone.identity", "its weight hash or pooling differs from the stage's")
    head = stage["head"]
    _fields(head, f"{where}.head", _HEAD)
    n_views = stage["recipe"].get("n_views")
    if head["n_views"] != n_views:
        raise bad_field(f"{where}.head.n_views", f"{head['n_views']}, but the view recipe has {_show(n_views)} views")
    if head["view_names"] is not None and len(head["view_names"]) != n_views:
        raise bad_field(f"{where}.head.view_names", f"{len(head['view_names'])} names for {n_views} views")
    if stage["head_file"] not in files:
        raise bad_field(f"{where}.head_file", f"{_show(stage['head_file'])} is not among the bundle's files")
    failure, failure_file = stage["failure"], stage["failure_file"]
    if (failure is None) != (failure_file is None) or failure_file == stage["head_file"] or (
            failure_file is not None and failure_file not in files):
        raise bad_field(f"{where}.failure", "failure and failure_file must both be set, with a file of its own, "
                                            "or both be null")


def _check_local(local, where: str) -> None:
    """The recorded local paths of a backbone entry: per path field, null or {absolute, relative}."""
    if local is None:
        return
    _fields(local, where, {}, {key: _optional(_OBJ) for key in ("spec", "checkpoint", "adapter")})
    for key, location in local.items():
        if location is None:
            continue
        _fields(location, f"{where}.{key}", _LOCATION)
        relative = location["relative"]
        if not Path(location["absolute"]).is_absolute() or (relative is not None and Path(relative).is_absolute()):
            raise bad_field(f"{where}.{key}", "'absolute' must be an absolute path and 'relative' a relative one")


def _check_router(manifest: dict) -> None:
    """A cascade's router: one threshold per stage but the last, one confidence per run stage (the
    gate's score exactly where the run's head has a gate)."""
    stages = manifest["stages"]
    if len(stages) == 1:
        if "router" in manifest:
            raise bad_field("router", "a single-stage bundle has no router")
        return
    router = manifest.get("router")
    _fields(router, "router", _ROUTER)
    runs = [st for st in stages if "external" not in st]
    if len(router["thresholds"]) != len(stages) - 1:
        raise bad_field("router.thresholds", f"{len(router['thresholds'])} thresholds for {len(stages)} stages")
    if len(router["confidence"]) != len(runs):
        raise bad_field("router.confidence", f"{len(router['confidence'])} entries for {len(runs)} run stages")
    for k, (kind, st) in enumerate(zip(router["confidence"], runs)):
        if (kind == "gate") != (st["head"]["config"].get("policy") == "gate"):
            raise bad_field("router.confidence", f"stage {k} routes on '{kind}' but its head "
                                                 f"{'has' if kind != 'gate' else 'has no'} gate")


def as_threshold(value) -> float | None:
    """A router threshold as jsonio writes it (a number, "inf" or "-inf") as a float; None for
    anything else, NaN included."""
    try:
        t = jsonio.number(value)
    except DataError:
        return None
    return None if math.isnan(t) else t


def is_external_spec(value) -> bool:
    """Whether `value` reads as an external stage's ``module:function`` (dotted names only)."""
    return isinstance(value, str) and bool(_EXTERNAL.match(value))


def external_spec(manifest: dict) -> str | None:
    """The ``module:function`` a checked manifest declares as its external last stage, or None."""
    return manifest["stages"][-1].get("external")


def served_calibration(stage: dict, where: str):
    """The calibration map ``p (n,) → q (n,)`` of checked stage entry `stage` (None without one).

    Rebuilt with :func:`natix.calibrate.apply.calibration_from_json` (which refuses NaN and
    infinite parameters), then probed on probabilities across [0, 1]: a parameter that overflows
    on them (a Platt coefficient of 1e308) or a map that leaves [0, 1] is refused.
    """
    from natix.calibrate.apply import calibration_from_json

    cal, thresholds = stage["calibration"], stage["thresholds"]
    if cal is None:
        return None
    # The two numbers the served map reads beyond the calibrator's state: where decisions flip.
    if "decision_threshold" in cal and (why := _probability(cal["decision_threshold"])):
        raise bad_field(f"{where}.calibration.decision_threshold", why)
    crc = (thresholds or {}).get("crc_recentre_below")
    if crc is not None and not (isinstance(crc, (int, float)) and not isinstance(crc, bool) and -1 <= crc < 1):
        raise bad_field(f"{where}.thresholds.crc_recentre_below", f"{_show(crc)} is not a number in [-1, 1)")
    try:
        fn = calibration_from_json(cal, thresholds=thresholds)
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            q = fn(_PROBE.copy())
    except (DataError, ValueError, TypeError, KeyError, FloatingPointError) as exc:
        why = " ".join(str(exc).rsplit(": ", 1)[0].split()) or type(exc).__name__
        raise bad_field(f"{where}.calibration", why) from None
    if q.shape != _PROBE.shape or not (np.isfinite(q) & (q >= 0) & (q <= 1)).all():
        raise bad_field(f"{where}.calibration", "it maps probabilities outside [0, 1]")
    return fn
