"""Export: a fitted run, or a cascade of runs, frozen into a bundle directory.

Runs are read only through :class:`natix.rundir.Run` (config, head weights, calibration and
thresholds, failure predictor, prior). Each stage entry records how images became the
features its head was trained on, taken from the identity of the run's cache. The bundle is
written next to `out` and swapped in whole.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from pathlib import Path

from natix import __version__, jsonio
from natix.errors import DataError
from natix.rundir import Run, check_replace
from natix.serve.location import record
from natix.serve.manifest import FORMAT, MANIFEST, is_bundle, manifest_bytes, read_key, sha256
from natix.serve.schema import as_threshold, is_external_spec
from natix.serve.stage import build_head

__all__ = ["export_bundle"]

_IDENTITY_KEYS = ("backbone", "views", "preprocess", "precision", "store_dtype")


def export_bundle(path, out, *, sign_key=None, replace: bool = True) -> Path:
    """Freeze a run directory, or a cascade directory (one holding ``cascade.json``), into the
    bundle directory `out`; returns `out`.

    The runs' caches must still exist (their identities say how images become features). `out` is
    written next to itself and swapped in whole, so an existing bundle there is replaced only
    once the new one is complete (``replace=False`` refuses it, as ``natix export`` does without
    ``--force``); any other non-empty directory is refused.

    `sign_key` (bytes, or the path of a key file; at least 16 bytes) signs the manifest with
    HMAC-SHA256, which ``load_bundle(..., verify_key=...)`` checks (:mod:`natix.serve.manifest`).
    A cascade's external stage is recorded by name, never imported here.
    """
    path, out = Path(path), Path(out)
    key = None if sign_key is None else read_key(sign_key, option="sign_key")
    if (path / "cascade.json").is_file():
        return _export_cascade(path, out, key, replace)
    run = Run(path)
    stage, files = _stage_entry(run, 0, out=out, replace=replace)
    manifest = _manifest(stages=[stage], prior=run.prior(), files=files, source_run=str(path.resolve()))
    return _write_bundle(out, manifest, files, key)


def _manifest(*, stages: list, prior: float, files: dict[str, bytes], **sources) -> dict:
    """The manifest (without its digest) of `stages` and `files`; `sources` say where they came from."""
    return {"format": FORMAT, "natix_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 - Python 3.10
            **sources, "stages": stages, "prior": prior,
            "files": {name: sha256(data) for name, data in sorted(files.items())}}


def _write_bundle(out: Path, manifest: dict, files: dict[str, bytes], key: bytes | None) -> Path:
    _write_dir(out, {**files, MANIFEST: manifest_bytes(manifest, sign_key=key)})
    return out


def _check_out(out: Path, replace: bool) -> None:
    """Refuse an existing `out` that is neither empty nor a natix bundle, and a bundle unless `replace`."""
    check_replace(out, force=replace, what="natix bundle", ours=is_bundle)


def _stage_entry(run: Run, k: int, *, out: Path, replace: bool) -> tuple[dict, dict[str, bytes]]:
    """The manifest entry of `run` as stage `k` (0-based) and the files it needs; `out` is
    checked once the run's cache is known to be readable (the order single-run export always had)."""
    from natix.calibrate.apply import calibration_from_json

    cfg = run.config
    head_bytes = run.model_bytes()
    identity, source = _cache_identity(run)
    _check_out(out, replace)
    head = {"config": cfg["head"], "dim": int(cfg["cache"]["dim"]), "n_views": int(cfg["cache"]["n_views"]),
            "view_names": cfg["cache"].get("view_names")}
    build_head(head, head_bytes, where=f"run '{run.path}'", fix="refit the run with natix fit-head")  # refuse now
    calibration, thresholds = run.calibration()
    if calibration is not None:
        calibration_from_json(calibration, thresholds=thresholds)
    failure = run.failure()
    head_name, failure_name = f"stage{k}_head.safetensors", f"stage{k}_failure.safetensors"
    files = {head_name: head_bytes}
    if failure is not None:
        files[failure_name] = failure[1]
    bb = identity["backbone"]
    typed = {"spec": source["backbone"], "checkpoint": source.get("checkpoint"), "adapter": source.get("adapter")}
    stage = {
        "backbone": {**typed, "local": record(typed, out), "weights_sha256": bb["weights_sha256"],
                     "adapter_sha256": (bb.get("adapter") or {}).get("weights_sha256"), "identity": bb},
        "extractor_version": identity["extractor_version"],
        "recipe": identity["views"],
        "preprocess": identity["preprocess"],
        "pool": bb["pool"],
        "precision": identity["precision"],
        "store_dtype": identity["store_dtype"],
        "cache_fingerprint": cfg["cache"]["fingerprint"],
        "head": head,
        "head_file": head_name,
        "calibration": calibration,
        "thresholds": thresholds,
        "failure": None if failure is None else failure[0],
        "failure_file": None if failure is None else failure_name,
    }
    return stage, files


def _cache_identity(run: Run) -> tuple[dict, dict]:
    """The identity and source of the cache the run was fitted on, checked against the run."""
    from natix.cache.store import open_cache
    from natix.errors import CacheError

    path, want = run.cache["path"], run.cache["fingerprint"]
    try:
        with open_cache(path) as cache:
            identity, source, fp = cache.identity, cache.source, cache.fingerprint
    except CacheError as exc:
        raise DataError(f"run '{run.path}' was fitted on cache '{path}', which cannot be read ({exc}): the bundle "
                        "needs that cache's identity; re-extract it with natix extract") from None
    if fp != want:
        raise DataError(f"cache '{path}' now holds features of fingerprint {fp[:12]}, not the {want[:12]} "
                        "the run was fitted on: refit the run on this cache")
    missing = [k for k in _IDENTITY_KEYS if k not in identity]
    if missing or not source.get("backbone") or "weights_sha256" not in identity.get("backbone", {}):
        raise DataError(f"cache '{path}' was not written by natix extract (no backbone identity): a bundle needs "
                        "a run fitted on extracted features")
    return identity, source


def _export_cascade(cascade: Path, out: Path, key: bytes | None, replace: bool) -> Path:
    """A cascade directory → a cascade bundle: one stage entry per run, an optional last
    ``{"external": "module:function"}`` entry, and the router (mode, thresholds, confidence)."""
    _check_out(out, replace)
    doc_file = cascade / "cascade.json"
    mode, sources, confidence, thresholds = _read_cascade(doc_file)
    runs, external = _cascade_stages(sources)
    stages, files = [], {}
    for k, run in enumerate(runs):
        stage, stage_files = _stage_entry(run, k, out=out, replace=replace)
        gated = stage["head"]["config"].get("policy") == "gate"
        if (confidence[k] == "gate") != gated:
            raise DataError(f"cascade stage {k + 1} routes on '{confidence[k]}' but the head of run '{run.path}' "
                            f"{'has' if gated else 'has no'} gate: rerun natix cascade on the current runs")
        stages.append(stage)
        files.update(stage_files)
    if external is not None:
        stages.append({"external": external})
    manifest = _manifest(stages=stages, prior=runs[0].prior(), files=files,
                         source_cascade=str(cascade.resolve()),
                         source_runs=[str(r.path.resolve()) for r in runs])
    manifest["router"] = {"mode": str(mode), "thresholds": thresholds,
                          "confidence": [str(c) for c in confidence[:len(runs)]]}
    return _write_bundle(out, manifest, files, key)


def _read_cascade(doc_file: Path) -> tuple[str, list, list, list[float]]:
    """(mode, stage sources, confidence kinds, router thresholds) of a cascade.json, checked."""
    doc = jsonio.read_json(doc_file, fix="rerun natix cascade")
    try:
        mode, sources, confidence = doc["mode"], list(doc["stages"]), list(doc["confidence"])
        raw = list(doc["router"]["thresholds"])
    except (KeyError, TypeError):
        raise DataError(f"'{doc_file}' lacks mode, router thresholds, stages or confidence: "
                        "rerun natix cascade") from None
    thresholds = [_threshold(t) for t in raw]
    if len(sources) < 2 or len(thresholds) != len(sources) - 1 or len(confidence) != len(sources):
        raise DataError(f"'{doc_file}' has {len(sources)} stages, {len(thresholds)} thresholds and "
                        f"{len(confidence)} confidences: rerun natix cascade")
    return mode, sources, confidence, thresholds


def _threshold(value) -> float:
    """A router threshold of cascade.json (a number, or "inf"/"-inf" as jsonio writes it)."""
    t = as_threshold(value)
    if t is None:
        raise DataError(f"cascade threshold {value!r} is not a number: rerun natix cascade")
    return t


def _cascade_stages(sources: list) -> tuple[list[Run], str | None]:
    """The run stages of a cascade and its external last stage ('module:function'), if any; the
    external stage is checked by name only: the file does not decide what code runs here."""
    runs, external = [], None
    for i, src in enumerate(sources):
        run = _as_run(src) if external is None else None
        if run is not None:
            runs.append(run)
        elif i == len(sources) - 1 and i > 0 and is_external_spec(src):
            external = src
        else:
            raise DataError(f"cascade stage {i + 1} '{src}' is neither a run directory nor a last external "
                            "'module:function' stage: rerun natix cascade from where its runs are")
    return runs, external


def _as_run(src) -> Run | None:
    """`src` opened as a run, or None when it is none."""
    try:
        return Run(src)
    except (DataError, TypeError):
        return None


def _write_dir(out: Path, files: dict[str, bytes]) -> None:
    """Write `files` into a sibling temporary directory, then swap it in for `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
