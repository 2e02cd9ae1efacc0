"""One run stage of a bundle, ready to answer: its featurizer, head and calibration map.

A stage's manifest entry says how images became the features its head was trained on (backbone
spec and weight hashes, view recipe, preprocessing, pooling, precision, store dtype). Loading
rebuilds exactly that :class:`natix.extract.Featurizer`, the one that filled the cache, and
refuses weights whose hashes differ from the bundle's.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from natix import jsonio
from natix import metrics as M
from natix.errors import BackboneError, DataError, NatixError
from natix.serve.location import KEYS, candidates
from natix.serve.schema import bad_field, served_calibration

log = logging.getLogger(__name__)

__all__ = ["FORWARD_IMAGES", "Stage", "build_head", "check_backbone"]

FORWARD_IMAGES = 32  # images per backbone forward of a stage (halved on CUDA out-of-memory)
# The preprocessing rules the featurizer implements; a bundle naming others cannot be served.
_SERVED_PREPROCESS = {"resize": "squash", "sampler": "bilinear-antialias-uint8", "decode": "pil-rgb-exif"}


def build_head(head: dict, data: bytes, *, where: str, fix: str):
    """The head model of a stage entry, weights loaded strictly, in eval mode; a `DataError` naming
    `where` and `fix` when it does not load."""
    from safetensors.torch import load as load_safetensors

    from natix.heads.train import HeadConfig

    try:
        model = HeadConfig(**head["config"]).build(int(head["dim"]), int(head["n_views"]))
        model.load_state_dict(load_safetensors(data), strict=True)
    except NatixError:  # already one line with its own fix (natix input errors are ValueErrors too)
        raise
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"the head of {where} does not load ({first}): {fix}") from None
    return model.eval()


def check_backbone(ident: dict, spec: dict) -> None:
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
    ident = jsonio.jsonable(ident)  # tuples → lists, as the manifest holds them
    differ = sorted(k for k in set(expected) | set(ident) if expected.get(k) != ident.get(k))
    if differ:
        raise BackboneError(f"backbone {', '.join(differ)} differ from the bundle's: pass the backbone the bundle "
                            "was exported with (same loader and configuration)")


def _recipe_and_preprocess(stage: dict):
    """The `ViewRecipe` and `Preprocess` of a stage entry; only what this natix implements."""
    from natix.config import Preprocess, ViewRecipe

    ident = stage["preprocess"]
    unknown = {k: ident.get(k) for k, v in _SERVED_PREPROCESS.items() if ident.get(k) != v}
    if unknown:
        raise DataError(f"bundle preprocessing {unknown} is not one this natix implements: upgrade natix")
    try:
        recipe, preprocess = ViewRecipe.from_identity(stage["recipe"]), Preprocess.from_identity(ident)
    except NatixError as exc:
        raise DataError(f"bundle {exc}") from None
    return recipe, preprocess


def _load_backbone(stage: dict, root: Path, *, backbone, checkpoint, adapter):
    """The stage's backbone from the given paths, else from where the bundle at `root` recorded
    them (:mod:`natix.serve.location`: each place in turn), hashes checked."""
    from natix.extract.backbones import load_backbone

    entry = stage["backbone"]
    given = {"spec": backbone, "checkpoint": checkpoint, "adapter": adapter}
    first = None
    for spec, ckpt, adp in itertools.product(*(candidates(entry, root, key, given[key]) for key in KEYS)):
        try:
            model, ident = load_backbone(spec, checkpoint=ckpt, adapter=adp, pool=stage["pool"])
            check_backbone(ident, entry)
            return model
        except BackboneError as exc:
            first = first or exc
    fix = "pass --backbone PATH"
    if any(given.values()) or fix in str(first):
        raise first
    raise BackboneError(f"{first} (if the bundle's weights moved, {fix}, or load_bundle(..., backbone=PATH))") from None


@dataclass
class Stage:
    """One stage ready to run: the featurizer of its cache, its head and calibration map."""

    featurizer: object  # natix.extract.Featurizer
    head: object
    calibrate: object  # p (n,) → q (n,), or None
    # The featurizer reuses its input buffers (and halves its batch on out-of-memory) from call to
    # call, so threads sharing a bundle take turns on it; the head and calibration hold no state.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def device(self):
        return self.featurizer.device

    @classmethod
    def load(cls, stage: dict, blobs: dict[str, bytes], device, *, where: str, root: Path, backbone=None,
             checkpoint=None, adapter=None, precision: str | None = None) -> Stage:
        """The stage of checked manifest entry `stage` (named `where` in messages, e.g. "stages[0]")
        of the bundle at `root` on `device`; `precision` None: the cache's own."""
        from natix.cache.fingerprint import EXTRACTOR_VERSION
        from natix.extract.featurizer import Featurizer

        if stage["extractor_version"] != EXTRACTOR_VERSION:
            raise DataError(f"bundle features come from extractor version {stage['extractor_version']}, this natix "
                            f"extracts version {EXTRACTOR_VERSION}: re-extract, refit and re-export with this natix")
        recipe, preprocess = _recipe_and_preprocess(stage)
        calibrate = served_calibration(stage, where)
        model = _load_backbone(stage, root, backbone=backbone, checkpoint=checkpoint, adapter=adapter)
        precision = precision or stage["precision"]
        if precision != stage["precision"]:
            log.info("serving in %s while the cache was extracted in %s: features differ slightly from the cache",
                     precision, stage["precision"])
        featurizer = Featurizer(model, recipe, preprocess, device=device, precision=precision,
                                store_dtype=stage["store_dtype"], batch_size=FORWARD_IMAGES)
        if featurizer.dim != stage["head"]["dim"]:
            raise bad_field(f"{where}.head.dim", f"{stage['head']['dim']}, but the backbone gives {featurizer.dim}")
        head = build_head(stage["head"], blobs[stage["head_file"]], where=f"bundle {where}",
                          fix="re-export the bundle with this natix")
        return cls(featurizer=featurizer, head=head.to(featurizer.device), calibrate=calibrate)

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """Features ``[n, V, D]`` in the store dtype of decoded ``[H, W, 3]`` uint8 images; an image
        whose features overflow the store dtype gets inf entries (the caller answers the prior)."""
        from natix.extract.featurizer import as_chw

        with self._lock:
            return self.featurizer.features([as_chw(a) for a in images])

    def raw(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated P(roadwork) ``(n,)`` of features ``[n, V, D]`` and the routing confidence
        (:func:`natix.metrics.confidence`: the gate score when the head has a gate, else
        ``max(p, 1 - p)``, as the router was fitted)."""
        from natix.heads.train import predict

        out = predict(self.head, X, device=str(self.device))
        return out["prob"], M.confidence(out["prob"], out.get("gate"))

    def proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated P(roadwork) ``(n,)`` of features ``[n, V, D]``."""
        from natix.heads.train import predict

        prob = predict(self.head, X, device=str(self.device))["prob"]
        return self.calibrate(prob) if self.calibrate is not None else prob
