"""Bundles: a fitted run frozen into a directory that answers images with probabilities.

A bundle directory holds JSON and safetensors only (nothing pickled)::

    manifest.json              format, natix version, stages, prior, the sha256 of every other
                               file, and its own digest (of its canonical JSON without the digest)
    stage0_head.safetensors    the head's weights (a copy of the run's model.safetensors)
    stage0_failure.safetensors the run's failure predictor, when it has one

Each stage records what turns an image into the features its head was trained on: the backbone
(spec, checkpoint and adapter as given to `natix extract`, plus the weight hashes the cache
fingerprint was built from), the view recipe, the preprocessing, pooling, precision and store
dtype. Loading checks every file hash and the backbone's weight hash, so a bundle either answers
exactly as the run did on its cache or refuses to load with a one-line error.

The backbone weights are not copied: they are large, often gated, and identified by hash. A
bundle whose weights moved loads with ``load_bundle(path, backbone=NEW_PATH)``.

A cascade directory (written by :func:`natix.cascade.router.cascade_run`, it holds
``cascade.json``) exports to a cascade bundle: one stage entry per run stage (files
``stage{k}_head.safetensors``, ``stage{k}_failure.safetensors``, k = 0, 1, ...), an optional last
entry ``{"external": "module:function"}`` for an external stage, and a ``router`` entry
``{"mode", "thresholds", "confidence"}``. Serving routes as the router was fitted: on each run
stage's RAW probability and confidence (the gate score when the head has a gate, else
``max(p, 1 - p)``); the stages' calibration maps are kept in the manifest but not applied, since
the thresholds were chosen on uncalibrated probabilities.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import __version__
from natix.errors import BackboneError, ConfigError, DataError, DecodeError

log = logging.getLogger(__name__)

FORMAT = "natix-bundle/1"
MANIFEST = "manifest.json"
_DIGEST_KEY = "manifest_sha256"
_SERVED_PREPROCESS = {"resize": "squash", "sampler": "bilinear-antialias-uint8", "decode": "pil-rgb-exif"}


# --------------------------------------------------------------------------- hashing


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj) -> bytes:
    """Sorted keys, no whitespace, finite numbers only: equal manifests hash equally."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _digest(manifest: dict) -> str:
    """The manifest's own digest: sha256 of its canonical JSON without the digest field."""
    return _sha256(_canonical({k: v for k, v in manifest.items() if k != _DIGEST_KEY}))


# --------------------------------------------------------------------------- export


def export_bundle(path, out) -> Path:
    """Freeze a run directory, or a cascade directory (one holding ``cascade.json``), into the
    bundle directory `out`; returns `out`.

    The runs' caches must still exist (their identities say how images become features). `out` is
    written next to itself and swapped in whole, so an existing bundle there is replaced only
    once the new one is complete; any other non-empty directory is refused.
    """
    path, out = Path(path), Path(out)
    if (path / "cascade.json").is_file():
        return _export_cascade(path, out)
    stage, files = _stage_entry(path, 0, out=out)
    manifest = {
        "format": FORMAT,
        "natix_version": __version__,
        "created": _now(),
        "source_run": str(path.resolve()),
        "stages": [stage],
        "prior": _prior(path),
        "files": {name: _sha256(data) for name, data in sorted(files.items())},
    }
    return _write_bundle(out, manifest, files)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 - Python 3.10


def _write_bundle(out: Path, manifest: dict, files: dict[str, bytes]) -> Path:
    manifest[_DIGEST_KEY] = _digest(manifest)
    _write_dir(out, {**files, MANIFEST: json.dumps(manifest, indent=2, allow_nan=False).encode() + b"\n"})
    return out


def _check_out(out: Path) -> None:
    if out.exists() and not _replaceable(out):
        raise ConfigError(f"'{out}' exists and is not a natix bundle: pass a new --out")


def _stage_entry(run: Path, k: int, *, out: Path) -> tuple[dict, dict[str, bytes]]:
    """The manifest entry of run `run` as stage `k` (0-based) and the files it needs; `out` is
    checked once the run's cache is known to be readable (the order single-run export always had)."""
    from natix.calibrate.apply import calibration_from_json
    from natix.heads.runs import read_config

    cfg = read_config(run)
    head_file = run / "model.safetensors"
    if not head_file.is_file():
        raise DataError(f"run '{run}' has no model.safetensors: refit it with natix fit-head")
    identity, source = _cache_identity(run, cfg)
    _check_out(out)

    head_bytes = head_file.read_bytes()
    head = {"config": cfg["head"], "dim": int(cfg["cache"]["dim"]), "n_views": int(cfg["cache"]["n_views"]),
            "view_names": cfg["cache"].get("view_names")}
    _build_head(head, head_bytes, where=f"run '{run}'")  # refuse now what could not load later
    calibration, thresholds = _read_json(run / "calibration.json"), _read_json(run / "thresholds.json")
    if calibration is not None:
        calibration_from_json(calibration, thresholds=thresholds)
    failure = _read_json(run / "failure.json")
    head_name, failure_name = f"stage{k}_head.safetensors", f"stage{k}_failure.safetensors"
    files = {head_name: head_bytes}
    if failure is not None:
        weights = run / "failure.safetensors"
        if not weights.is_file():
            raise DataError(f"run '{run}' has failure.json but no failure.safetensors: rerun natix fit-failure")
        files[failure_name] = weights.read_bytes()

    bb = identity["backbone"]
    stage = {
        "backbone": {"spec": source["backbone"], "checkpoint": source.get("checkpoint"),
                     "adapter": source.get("adapter"), "weights_sha256": bb["weights_sha256"],
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
        "failure": failure,
        "failure_file": failure_name if failure is not None else None,
    }
    return stage, files


def _json_threshold(t) -> float | str:
    """A router threshold as strict JSON: finite float, or "inf" / "-inf"."""
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise DataError(f"cascade threshold {t!r} is not a number: rerun natix cascade") from None
    if math.isnan(v):
        raise DataError("a cascade threshold is NaN: rerun natix cascade")
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


def _export_cascade(cascade: Path, out: Path) -> Path:
    """A cascade directory → a cascade bundle (see the module docstring)."""
    from natix.cascade.router import load_callable

    _check_out(out)
    doc = _read_json(cascade / "cascade.json")
    try:
        mode, sources, confidence = doc["mode"], list(doc["stages"]), list(doc["confidence"])
        thresholds = [_json_threshold(t) for t in doc["router"]["thresholds"]]
    except (KeyError, TypeError):
        raise DataError(f"'{cascade / 'cascade.json'}' lacks mode, router thresholds, stages or confidence: "
                        "rerun natix cascade") from None
    if len(sources) < 2 or len(thresholds) != len(sources) - 1 or len(confidence) != len(sources):
        raise DataError(f"'{cascade / 'cascade.json'}' has {len(sources)} stages, {len(thresholds)} thresholds and "
                        f"{len(confidence)} confidences: rerun natix cascade")
    runs, external = [], None
    for i, src in enumerate(sources):
        run = Path(src)
        if (run / "config.json").is_file() and external is None:
            runs.append(run)
        elif i == len(sources) - 1 and i > 0 and isinstance(src, str) and src.count(":") == 1:
            load_callable(src)  # refuse now what could not load later
            external = src
        else:
            raise DataError(f"cascade stage {i + 1} '{src}' is neither a run directory nor a last external "
                            "'module:function' stage: rerun natix cascade from where its runs are")
    stages, files = [], {}
    for k, run in enumerate(runs):
        stage, stage_files = _stage_entry(run, k, out=out)
        gated = stage["head"]["config"].get("policy") == "gate"
        if (confidence[k] == "gate") != gated:
            raise DataError(f"cascade stage {k + 1} routes on '{confidence[k]}' but the head of run '{run}' "
                            f"{'has' if gated else 'has no'} gate: rerun natix cascade on the current runs")
        stages.append(stage)
        files.update(stage_files)
    if external is not None:
        stages.append({"external": external})
    manifest = {
        "format": FORMAT,
        "natix_version": __version__,
        "created": _now(),
        "source_cascade": str(cascade.resolve()),
        "source_runs": [str(r.resolve()) for r in runs],
        "stages": stages,
        "router": {"mode": str(mode), "thresholds": thresholds,
                   "confidence": [str(c) for c in confidence[:len(runs)]]},
        "prior": _prior(runs[0]),
        "files": {name: _sha256(data) for name, data in sorted(files.items())},
    }
    return _write_bundle(out, manifest, files)


def _cache_identity(run: Path, cfg: dict) -> tuple[dict, dict]:
    """The identity and source of the cache the run was fitted on, checked against the run."""
    from natix.cache.store import open_cache
    from natix.errors import CacheError

    path = cfg["cache"]["path"]
    try:
        with open_cache(path) as cache:
            identity, source, fp = cache.identity, cache.source, cache.fingerprint
    except CacheError as exc:
        raise DataError(f"run '{run}' was fitted on cache '{path}', which cannot be read ({exc}): the bundle "
                        "needs that cache's identity; re-extract it with natix extract") from None
    if fp != cfg["cache"]["fingerprint"]:
        raise DataError(f"cache '{path}' now holds features of fingerprint {fp[:12]}, not the {cfg['cache']['fingerprint'][:12]} "
                        "the run was fitted on: refit the run on this cache")
    missing = [k for k in ("backbone", "views", "preprocess", "precision", "store_dtype") if k not in identity]
    if missing or not source.get("backbone") or "weights_sha256" not in identity.get("backbone", {}):
        raise DataError(f"cache '{path}' was not written by natix extract (no backbone identity): a bundle needs "
                        "a run fitted on extracted features")
    return identity, source


def _prior(run: Path) -> float:
    """Fraction of positives among the run's training labels."""
    path = run / "predictions" / "train.npz"
    if not path.is_file():
        raise DataError(f"run '{run}' has no predictions/train.npz: refit it with natix fit-head")
    with np.load(path, allow_pickle=False) as z:
        labels = z["labels"]
    if labels.size == 0:
        raise DataError(f"run '{run}' has no training labels: refit it on a labeled cache")
    return float(np.mean(labels == 1))


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"'{path}' is unreadable ({exc}): rerun the step that wrote it") from None


def _replaceable(out: Path) -> bool:
    """An empty directory, or a directory that holds a natix bundle."""
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    try:
        return json.loads((out / MANIFEST).read_text()).get("format", "").startswith("natix-bundle/")
    except (OSError, ValueError, AttributeError):
        return False


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


# --------------------------------------------------------------------------- loading


def _build_head(head: dict, data: bytes, *, where: str):
    """The head model of a stage, weights loaded strictly, in eval mode."""
    from safetensors.torch import load as load_safetensors

    from natix.heads.train import HeadConfig

    try:
        model = HeadConfig(**head["config"]).build(int(head["dim"]), int(head["n_views"]))
        model.load_state_dict(load_safetensors(data), strict=True)
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"the head of {where} does not load ({first}): refit the run with natix fit-head") from None
    return model.eval()


def _read_manifest(path: Path) -> tuple[dict, dict[str, bytes]]:
    """The manifest and the bytes of every file it lists, all hashes verified."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise DataError(f"'{path}' is not a natix bundle (no {MANIFEST}): pass a directory written by natix export")
    try:
        manifest = json.loads(mpath.read_bytes())
    except ValueError as exc:
        raise DataError(f"bundle file {MANIFEST} is not valid JSON ({exc}): re-export the bundle") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"bundle file {MANIFEST} has format {found!r}, not {FORMAT}: re-export the bundle with "
                        "this natix")
    try:
        digest = _digest(manifest)
    except ValueError:
        digest = None
    if manifest.get(_DIGEST_KEY) != digest:
        raise DataError(f"bundle file {MANIFEST} was altered (its digest does not match its content): re-export "
                        "the bundle")
    _check_fields(manifest)
    blobs = {}
    for name, want in manifest["files"].items():
        if Path(name).name != name or name in ("", ".", "..", MANIFEST):
            raise DataError(f"bundle file name '{name}' is not a plain file name: re-export the bundle")
        try:
            data = (path / name).read_bytes()
        except FileNotFoundError:
            raise DataError(f"bundle file {name} is missing: re-export the bundle or restore the file") from None
        except OSError as exc:
            raise DataError(f"bundle file {name} is unreadable ({exc.strerror or exc}): check its permissions") from None
        got = _sha256(data)
        if got != want:
            raise DataError(f"bundle file {name} was altered (sha256 {got[:12]}, the manifest says {want[:12]}): "
                            "re-export the bundle or restore the file")
        blobs[name] = data
    return manifest, blobs


_FIELDS = {"prior": (int, float), "stages": list, "files": dict}
_STAGE_FIELDS = {"backbone": dict, "extractor_version": int, "recipe": dict, "preprocess": dict, "pool": str,
                 "precision": str, "store_dtype": str, "head": dict, "head_file": str,
                 "calibration": (dict, type(None)), "thresholds": (dict, type(None))}
_ROUTER_FIELDS = {"mode": str, "thresholds": list, "confidence": list}
_BACKBONE_FIELDS = {"spec": str, "checkpoint": (str, type(None)), "adapter": (str, type(None)),
                    "weights_sha256": str, "adapter_sha256": (str, type(None)), "identity": dict}


def _check_fields(manifest: dict) -> None:
    """Refuse a manifest (with a valid digest) that lacks a field this natix reads."""
    def check(obj, fields, where):
        for key, kind in fields.items():
            if not isinstance(obj.get(key), kind):
                raise DataError(f"bundle file {MANIFEST} has no valid {where}{key}: re-export the bundle with this natix")

    check(manifest, _FIELDS, "")
    stages = manifest["stages"]
    for i, stage in enumerate(stages):
        if not isinstance(stage, dict):
            raise DataError(f"bundle file {MANIFEST} has no valid stages[{i}]: re-export the bundle with this natix")
        if "external" in stage:
            if i == 0 or i != len(stages) - 1 or not isinstance(stage["external"], str):
                raise DataError(f"bundle file {MANIFEST} has an invalid external stages[{i}] (only the last stage "
                                "may be external, as 'module:function'): re-export the bundle")
            continue
        check(stage, _STAGE_FIELDS, f"stages[{i}].")
        check(stage["backbone"], _BACKBONE_FIELDS, f"stages[{i}].backbone.")
        if stage["head_file"] not in manifest["files"]:
            raise DataError(f"bundle file {MANIFEST} does not list the head file {stage['head_file']}: re-export the bundle")
    if len(stages) > 1 or "router" in manifest:
        router = manifest.get("router")
        check(router if isinstance(router, dict) else {}, _ROUTER_FIELDS, "router.")
        n_runs = sum("external" not in st for st in stages)
        if len(router["thresholds"]) != len(stages) - 1 or len(router["confidence"]) != n_runs:
            raise DataError(f"bundle file {MANIFEST} has {len(router['thresholds'])} router thresholds and "
                            f"{len(router['confidence'])} confidences for {len(stages)} stages: re-export the bundle")


def load_bundle(path, *, backbone: str | None = None, checkpoint: str | None = None,
                adapter: str | None = None, device: str = "cpu", precision: str | None = None) -> Bundle:
    """Load and verify a bundle written by `export_bundle`.

    Parameters
    ----------
    path : the bundle directory.
    backbone, checkpoint, adapter : where the backbone's weights (timm checkpoint, PEFT adapter)
        are now, when they moved since export; default: the paths recorded in the bundle. Their
        weight hashes must equal the bundle's.
        For a cascade bundle, each may also be a list with one entry per run stage (None: the
        recorded path); a single value applies to every run stage.
    device : "cpu", "cuda[:N]" or "auto".
    precision : "fp32" or "bf16"; default: the precision the cache was extracted in, which
        reproduces its features.

    Raises `DataError` for a missing or altered file and `BackboneError` for weights that are not
    the bundle's (checked per stage). A cascade bundle's external stage is imported here
    (`ConfigError` when it cannot be).
    """
    from natix.extract.extractor import resolve_device

    path = Path(path)
    manifest, blobs = _read_manifest(path)
    if not manifest["stages"]:
        raise DataError(f"bundle '{path}' has no stages: re-export it with natix export")
    if precision is not None and precision not in ("fp32", "bf16"):
        raise ConfigError(f"unknown precision '{precision}': pass fp32 or bf16 (or nothing for the bundle's own)")
    run_stages = [st for st in manifest["stages"] if "external" not in st]
    n = len(run_stages)

    def per_stage(value, name):
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ConfigError(f"{name} has {len(value)} entries for the bundle's {n} run stages: pass one "
                                  "per stage (None for the recorded path) or a single path")
            return list(value)
        return [value] * n

    backbones, checkpoints, adapters = (per_stage(backbone, "backbone"), per_stage(checkpoint, "checkpoint"),
                                        per_stage(adapter, "adapter"))
    dev = resolve_device(device)
    stages = [_Stage.load(st, blobs, dev, backbone=backbones[k], checkpoint=checkpoints[k], adapter=adapters[k],
                          precision=precision) for k, st in enumerate(run_stages)]
    external = None
    if len(run_stages) < len(manifest["stages"]):
        from natix.cascade.router import ExternalStage, load_callable

        spec = manifest["stages"][-1]["external"]
        external = ExternalStage(load_callable(spec), name=spec)
    return Bundle(path, manifest, stages[0], stages=stages, external=external)


@dataclass
class _Stage:
    """One stage ready to run: backbone, views, head, calibration map."""

    backbone: object
    head: object
    recipe: object
    preprocess: object
    precision: str
    store_dtype: str
    folded: bool
    device: object
    calibrate: object  # p (n,) → q (n,), or None

    @classmethod
    def load(cls, stage: dict, blobs: dict[str, bytes], device, *, backbone, checkpoint, adapter, precision):
        from natix.cache.fingerprint import EXTRACTOR_VERSION
        from natix.calibrate.apply import calibration_from_json
        from natix.extract.backbones import load_backbone
        from natix.extract.extractor import fold_normalization

        if stage["extractor_version"] != EXTRACTOR_VERSION:
            raise DataError(f"bundle features come from extractor version {stage['extractor_version']}, this natix "
                            f"extracts version {EXTRACTOR_VERSION}: re-extract, refit and re-export with this natix")
        recipe, preprocess = _recipe(stage["recipe"]), _preprocess(stage["preprocess"])
        if recipe.n_views != stage["head"]["n_views"]:
            raise DataError(f"bundle recipe has {recipe.n_views} views but the head expects "
                            f"{stage['head']['n_views']}: re-export the bundle")
        head = _build_head(stage["head"], blobs[stage["head_file"]], where="the bundle")
        calibrate = None
        if stage["calibration"] is not None:
            calibrate = calibration_from_json(stage["calibration"], thresholds=stage["thresholds"])

        spec = stage["backbone"]
        given = {"backbone": backbone, "checkpoint": checkpoint, "adapter": adapter}
        name = backbone or spec["spec"]
        ckpt = checkpoint or spec["checkpoint"]
        adp = adapter or spec["adapter"]
        try:
            model, ident = load_backbone(name, checkpoint=ckpt, adapter=adp, pool=stage["pool"])
        except BackboneError as exc:
            if any(given.values()):
                raise
            raise BackboneError(f"{exc} (if the bundle's weights moved, pass load_bundle(..., backbone=PATH))") from None
        _check_backbone(ident, spec)

        precision = precision or stage["precision"]
        if precision != stage["precision"]:
            log.info("serving in %s while the cache was extracted in %s: features differ slightly from the cache",
                     precision, stage["precision"])
        # As the extractor: fold the normalisation into the patch embedding in fp32 only, so the
        # served features equal the cached ones bit for bit.
        folded = precision == "fp32" and fold_normalization(model, preprocess.mean, preprocess.std)
        return cls(backbone=model.to(device), head=head.to(device), recipe=recipe, preprocess=preprocess,
                   precision=precision, store_dtype=stage["store_dtype"], folded=folded, device=device,
                   calibrate=calibrate)

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """Features ``[n, V, D]`` in the store dtype of decoded HWC uint8 images."""
        import torch

        from natix.extract.views import build_views, normalize, view_table

        table = view_table(self.recipe)
        sizes = sorted({v.size for v in table})
        out = np.empty((len(images), self.recipe.n_views, self.backbone.dim), dtype=np.float32)
        tensors = [torch.from_numpy(a).permute(2, 0, 1).to(self.device) for a in images]
        with torch.inference_mode():
            views = build_views(tensors, self.recipe)
            for s in sizes:
                slots = [i for i, v in enumerate(table) if v.size == s]
                v = views[s]
                b, nv = v.shape[:2]
                v = v.reshape(b * nv, 3, s, s)
                x = v.float() if self.folded else normalize(v, self.preprocess.mean, self.preprocess.std)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    f = self.backbone(x).float()
                out[:, slots] = f.reshape(b, nv, -1).cpu().numpy()
        with np.errstate(over="ignore"):  # an overflowing image is answered with the prior by the caller
            return out.astype(self.store_dtype)  # the cache's rounding, so the head sees cached values

    def raw(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated P(roadwork) ``(n,)`` of features ``[n, V, D]`` and the cascade confidence: the
        head's gate score when it has a gate, else ``max(p, 1 - p)`` (as the router was fitted)."""
        from natix.heads.train import predict

        out = predict(self.head, X, device=str(self.device))
        prob = out["prob"]
        conf = out["gate"].astype(np.float64) if "gate" in out else np.maximum(prob, 1.0 - prob)
        return prob, conf

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(roadwork) ``(n,)`` of features ``[n, V, D]``."""
        from natix.heads.train import predict

        prob = predict(self.head, X, device=str(self.device))["prob"]
        return self.calibrate(prob) if self.calibrate is not None else prob


def _check_backbone(ident: dict, spec: dict) -> None:
    """Refuse weights, adapters or architectures other than the bundle's."""
    want, got = spec["weights_sha256"], ident["weights_sha256"]
    if got != want:
        raise BackboneError(f"backbone weights hash {got[:12]} does not match the bundle's {want[:12]}: pass the "
                            "weights the bundle was exported with")
    want_a = spec["adapter_sha256"]
    got_a = (ident.get("adapter") or {}).get("weights_sha256")
    if got_a != want_a:
        raise BackboneError(f"adapter weights hash {str(got_a)[:12]} does not match the bundle's {str(want_a)[:12]}: "
                            "pass the adapter the bundle was exported with (or none if it had none)")
    expected = spec["identity"]
    ident = json.loads(json.dumps(ident))  # tuples → lists, as the manifest holds them
    differ = sorted(k for k in set(expected) | set(ident) if expected.get(k) != ident.get(k))
    if differ:
        raise BackboneError(f"backbone {', '.join(differ)} differ from the bundle's: pass the backbone the bundle "
                            "was exported with (same loader and configuration)")


def _recipe(ident: dict):
    """The `ViewRecipe` of a recipe identity, which must round-trip exactly."""
    from natix.config import ViewRecipe

    tiles = ident["n_views"] > 1
    recipe = ViewRecipe(n_views=ident["n_views"], grid=ident["grid"] if tiles else 3,
                        overlap=ident["overlap"] if tiles else 0.125, view_size=ident["view_size"],
                        tile_size=ident["tile_size"] if tiles else ident["view_size"])
    if recipe.identity() != ident:
        raise DataError(f"bundle view recipe {ident} is not one this natix builds: upgrade natix")
    return recipe


def _preprocess(ident: dict):
    """The `Preprocess` of a preprocessing identity; only the rules the extractor implements."""
    from natix.config import Preprocess

    unknown = {k: ident.get(k) for k, v in _SERVED_PREPROCESS.items() if ident.get(k) != v}
    if unknown:
        raise DataError(f"bundle preprocessing {unknown} is not one this natix implements: upgrade natix")
    pp = Preprocess(resize=ident["resize"], sampler=ident["sampler"], mean=tuple(ident["mean"]),
                    std=tuple(ident["std"]), decode=ident["decode"])
    if pp.identity() != ident:
        raise DataError(f"bundle preprocessing {ident} is not one this natix implements: upgrade natix")
    return pp


# --------------------------------------------------------------------------- inputs


def _decode(item) -> np.ndarray:
    """One input → ``[H, W, 3]`` uint8, as the extractor decodes files; raises DecodeError per image."""
    from natix.data.decode import decode_image

    if isinstance(item, (str, os.PathLike)):
        try:
            data = Path(item).read_bytes()
        except OSError as exc:
            raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
        return decode_image(data)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_image(bytes(item))
    if isinstance(item, np.ndarray):
        # torch.from_numpy wants positive strides and a writable buffer
        return item if item.flags.c_contiguous and item.flags.writeable else np.array(item, order="C")
    return _decode_pil(item)


def _decode_pil(im) -> np.ndarray:
    """A PIL image → RGB uint8 with decode_image's rules (EXIF orientation, modes, pixel budget)."""
    from PIL import ImageOps

    from natix.data.decode import MAX_PIXELS, _to_rgb

    w, h = im.size
    if w * h > MAX_PIXELS:
        raise DecodeError(f"{w}x{h} = {w * h:,} pixels exceeds the {MAX_PIXELS:,}-pixel limit")
    if w < 1 or h < 1:
        raise DecodeError(f"image has no pixels ({w}x{h})")
    try:
        im.load()  # a lazily opened file decodes here; truncation surfaces here
        return _to_rgb(ImageOps.exif_transpose(im))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None


def _check_input(i: int, item) -> None:
    """Refuse what is no image at all (a caller's bug, not a bad image)."""
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview)):
        return
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3 or 0 in item.shape:
            raise DataError(f"image {i} is an array of shape {item.shape} and dtype {item.dtype}: pass "
                            "[H, W, 3] uint8 RGB")
        return
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a dependency
        Image = None
    if Image is not None and isinstance(item, Image.Image):
        return
    raise DataError(f"image {i} is a {type(item).__name__}: pass a path, bytes, a PIL image or an [H, W, 3] "
                    "uint8 array")


def _describe(item) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"'{item}'"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"({len(item)} bytes)"
    return f"({type(item).__name__})"


def _as_list(images) -> list:
    """One image or a sequence of images → a list."""
    single = (str, os.PathLike, bytes, bytearray, memoryview)
    if isinstance(images, single) or (isinstance(images, np.ndarray) and images.ndim == 3):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if hasattr(images, "size") and hasattr(images, "mode"):  # a PIL image
        return [images]
    if not isinstance(images, Sequence) and not hasattr(images, "__iter__"):
        raise DataError(f"images is a {type(images).__name__}: pass a list of paths, bytes or PIL images")
    return list(images)


# --------------------------------------------------------------------------- the bundle


class Bundle:
    """A loaded bundle: images in, P(roadwork) out.

    Use `load_bundle` to create one. Attributes: ``path``, ``manifest`` (the parsed
    manifest.json), ``prior`` (the answer for an image that cannot be decoded: the fraction of
    positives in the (first) run's training labels), ``device`` and ``thresholds`` (a cascade's
    router thresholds, one per stage but the last; None for a single-stage bundle).
    """

    def __init__(self, path: Path, manifest: dict, stage: _Stage, *, stages: list[_Stage] | None = None,
                 external=None):
        self.path = path
        self.manifest = manifest
        self.prior = float(manifest["prior"])
        self.device = stage.device
        self._stage = stage
        self._stages = stages if stages is not None else [stage]
        self._external = external
        router = manifest.get("router")
        self.thresholds = None if router is None else [float(t) for t in router["thresholds"]]

    @property
    def is_cascade(self) -> bool:
        return self.thresholds is not None

    def __repr__(self) -> str:
        if self.is_cascade:
            ext = f", external='{self._external.name}'" if self._external is not None else ""
            return (f"Bundle('{self.path}', cascade of {len(self.manifest['stages'])} stages "
                    f"({self.manifest['router']['mode']}), thresholds={self.thresholds}{ext}, device={self.device})")
        s = self.manifest["stages"][0]
        cal = (s["calibration"] or {}).get("method", "none")
        return (f"Bundle('{self.path}', backbone='{s['backbone']['spec']}', views={s['recipe']['n_views']}, "
                f"head={s['head']['config'].get('head')}/{s['head']['config'].get('agg')}, calibration={cal}, "
                f"device={self.device})")

    def features(self, images, *, batch_size: int = 32) -> np.ndarray:
        """Per-view features ``[n, V, D]`` in the cache's store dtype, equal to what `natix extract`
        stores for the same images; rows of images that cannot be decoded are NaN. For a cascade:
        the features of stage 1."""
        X, _ = self._features(_as_list(images), batch_size)
        return X

    def predict_proba(self, images, *, batch_size: int = 32, return_stage: bool = False):
        """P(roadwork) per image, shape ``(n,)``, float64 in [0, 1].

        `images` is a list of paths (str or Path), encoded bytes, PIL images or ``[H, W, 3]``
        uint8 RGB arrays (or one of them). Each image goes through the extraction pipeline of
        the bundle's cache (decode, views, backbone, store-dtype rounding), then the head and
        the run's calibration. An image that cannot be read or decoded gets `prior` and a
        logged warning; the others are answered as usual.

        A cascade bundle routes as its router: stage 1 answers (with its RAW probability: the
        thresholds were fitted on uncalibrated probabilities, so no calibration is applied) the
        images whose confidence (gate score, else ``max(p, 1 - p)``) is ``>= thresholds[0]``; only
        the others go through stage 2's backbone and head, and so on; the last stage answers what
        reaches it. An external last stage gets the deferred images as paths (or, when any of
        them is not a path, the inputs as given) and must answer each with a probability.

        With ``return_stage=True`` returns ``(prob, stage)``, ``stage`` the 0-based index of the
        answering stage per image (int64; -1 where the prior answered).
        """
        items = _as_list(images)
        prob = np.full(len(items), self.prior, dtype=np.float64)
        stage = np.full(len(items), -1, dtype=np.int64)
        if not self.is_cascade:
            X, ok = self._features(items, batch_size)
            if ok.any():
                prob[ok] = self._stage.proba(X[ok])
                stage[ok] = 0
            return (prob, stage) if return_stage else prob
        rows = np.arange(len(items))  # the images that reach the current stage
        K = len(self.thresholds) + 1
        for k, st in enumerate(self._stages):
            if len(rows) == 0:
                break
            X, ok = self._features([items[i] for i in rows], batch_size, stage=st)
            rows = rows[ok]
            if len(rows) == 0:
                break
            p, g = st.raw(X[ok])
            answer = g >= self.thresholds[k] if k < K - 1 else np.ones(len(rows), dtype=bool)
            prob[rows[answer]], stage[rows[answer]] = p[answer], k
            rows = rows[~answer]
        if self._external is not None and len(rows):
            prob[rows], stage[rows] = self._call_external([items[i] for i in rows]), K - 1
        return (prob, stage) if return_stage else prob

    def _call_external(self, inputs: list) -> np.ndarray:
        """The external stage's checked probabilities of `inputs` (paths as strings, else as given)."""
        from natix.cascade.router import ExternalStage

        ext = self._external
        if all(isinstance(x, (str, os.PathLike)) for x in inputs):
            return ext(inputs)
        # The same checks (shape, finiteness, range) on an answer to the inputs as given.
        return ExternalStage(lambda _: ext.fn(inputs), name=ext.name)([""] * len(inputs))

    def predict(self, images, *, batch_size: int = 32) -> np.ndarray:
        """Decisions ``predict_proba(images) > 0.5`` as int64 (0.5 is "no roadwork", as NATIX rounds)."""
        return (self.predict_proba(images, batch_size=batch_size) > 0.5).astype(np.int64)

    def _features(self, items: list, batch_size: int, stage: _Stage | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[n, V, D]`` of `stage` (default: the first; NaN rows for failures) and the mask
        of decoded images."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        for i, item in enumerate(items):
            _check_input(i, item)
        stage = stage or self._stage
        X = np.full((len(items), stage.recipe.n_views, stage.backbone.dim), np.nan, dtype=stage.store_dtype)
        ok = np.zeros(len(items), dtype=bool)
        for start in range(0, len(items), batch_size):
            decoded, rows = [], []
            for i in range(start, min(start + batch_size, len(items))):
                try:
                    decoded.append(_decode(items[i]))
                    rows.append(i)
                except DecodeError as exc:
                    log.warning("image %d %s cannot be decoded (%s): answering the prior %.4f", i,
                                _describe(items[i]), exc, self.prior)
            if not rows:
                continue
            feats = stage.features(decoded)
            finite = np.isfinite(feats).all(axis=(1, 2))
            for i in np.asarray(rows)[~finite]:
                log.warning("image %d %s gives features that overflow %s: answering the prior %.4f", i,
                            _describe(items[i]), stage.store_dtype, self.prior)
            X[np.asarray(rows)[finite]] = feats[finite]
            ok[np.asarray(rows)[finite]] = True
        return X, ok


__all__ = ["FORMAT", "Bundle", "export_bundle", "load_bundle"]
