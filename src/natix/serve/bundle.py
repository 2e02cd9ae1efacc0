"""Bundles: a fitted run frozen into a directory that answers images with probabilities.

A bundle directory holds JSON and safetensors only (nothing pickled)::

    manifest.json              format, natix version, stages, prior, the sha256 of every other
                               file, its own digest (of its canonical JSON without the digest)
                               and, when exported with a key, its HMAC-SHA256 signature
    stage0_head.safetensors    the head's weights (a copy of the run's model.safetensors)
    stage0_failure.safetensors the run's failure predictor, when it has one

Each stage records what turns an image into the features its head was trained on: the backbone
(spec, checkpoint and adapter as given to `natix extract`, plus the weight hashes the cache
fingerprint was built from), the view recipe, the preprocessing, pooling, precision and store
dtype. Loading checks every file hash and the backbone's weight hash and builds the same
:class:`natix.extract.Featurizer` that filled the cache, so a bundle either answers exactly as the
run did on its cache or refuses to load with a one-line error.

The backbone weights are not copied: they are large, often gated, and identified by hash. Local
paths are recorded absolute and relative to the bundle (:mod:`natix.serve.location`), so a bundle
loads from any folder and after moving together with its backbone; a bundle whose weights moved
elsewhere loads with ``load_bundle(path, backbone=NEW_PATH)`` (``natix predict --backbone``).

A cascade directory (written by :func:`natix.cascade.evaluation.cascade_run`, it holds
``cascade.json``) exports to a cascade bundle: one stage entry per run stage (files
``stage{k}_head.safetensors``, ``stage{k}_failure.safetensors``, k = 0, 1, ...), an optional last
entry ``{"external": "module:function"}`` declaring an external stage (imported only when the
caller names it: ``load_bundle(..., external=...)``, ``natix predict --stage3``), and a ``router`` entry
``{"mode", "thresholds", "confidence"}``. Serving routes as the router was fitted: on each run
stage's RAW probability and confidence (:func:`natix.metrics.confidence`); the stages'
calibration maps are kept in the manifest but not applied, since the thresholds were chosen on
uncalibrated probabilities.

Hashes detect damage, not malice: every manifest field is checked against its schema and range
on load (:mod:`natix.serve.schema`), and a bundle that travels can be signed and verified
(:mod:`natix.serve.manifest`).

The pieces: :mod:`natix.serve.manifest` (format, digest, signature, verified reading),
:mod:`natix.serve.schema` (every field's type and range),
:mod:`natix.serve.export` (writing), :mod:`natix.serve.inputs` (what counts as an image),
:mod:`natix.serve.stage` (one stage: featurizer, head, calibration).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.errors import ConfigError, DecodeError
from natix.progress import Progress, say
from natix.serve.inputs import as_list, check_input, decode, describe
from natix.serve.manifest import read_key, read_manifest, thresholds
from natix.serve.schema import SERVED_PRECISIONS, external_spec
from natix.serve.stage import Stage

log = logging.getLogger(__name__)

__all__ = ["Bundle", "load_bundle"]


class Bundle:
    """A loaded bundle: images in, P(roadwork) out (:meth:`roadwork_probability`, ``(n,)``), or both
    class probabilities as scikit-learn's ``predict_proba`` gives them (:meth:`predict_proba`, ``(n, 2)``).

    Use `load_bundle` to create one. Attributes: ``path``, ``manifest`` (the parsed
    manifest.json), ``stages`` (the run stages, each with its ``featurizer``, ``head`` and
    ``calibrate``), ``prior`` (the answer for an image that cannot be decoded: the fraction of
    positives in the (first) run's training labels), ``device`` and ``thresholds`` (a cascade's
    router thresholds, one per stage but the last; None for a single-stage bundle).

    Threads may share a bundle and the images they pass: each stage's backbone runs one call at a
    time, and a PIL image is read into a private array under a lock (:mod:`natix.serve.inputs`).

    A call whose images span more than one batch counts them as they are answered ("predict",
    :mod:`natix.progress`) unless given ``progress=False``; a call of one batch (a request of a
    validator) says nothing.
    """

    def __init__(self, path: Path, manifest: dict, stages: list[Stage], *, external=None):
        self.path = path
        self.manifest = manifest
        self.prior = float(manifest["prior"])
        self.stages = stages
        self.device = stages[0].device
        self.thresholds = thresholds(manifest)
        self._external = external

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

    def features(self, images, *, batch_size: int = 32, progress: bool = True) -> np.ndarray:
        """Per-view features ``[n, V, D]`` in the cache's store dtype, equal to what `natix extract`
        stores for the same images; rows of images that cannot be decoded are NaN. For a cascade:
        the features of stage 1."""
        X, _ = self._features(as_list(images), batch_size, self.stages[0], "features" if progress else None)
        return X

    def roadwork_probability(self, images, *, batch_size: int = 32, return_stage: bool = False,
                             progress: bool = True):
        """P(roadwork) per image, shape ``(n,)``, float64 in [0, 1]: the one float a miner answers.

        `images` is a list of paths (str or Path), encoded bytes, PIL images or ``[H, W, 3]``
        uint8 RGB arrays (or one of them), decoded `batch_size` at a time. Each image goes
        through the extraction pipeline of the bundle's cache (decode, views, backbone,
        store-dtype rounding: the cache's featurizer), then the head and the run's calibration.
        An image that cannot be read or decoded gets `prior` and a logged warning; the others
        are answered as usual.

        A cascade bundle routes as its router: stage 1 answers (with its RAW probability: the
        thresholds were fitted on uncalibrated probabilities, so no calibration is applied) the
        images whose confidence (gate score, else ``max(p, 1 - p)``) is ``>= thresholds[0]``; only
        the others go through stage 2's backbone and head, and so on; the last stage answers what
        reaches it. An external last stage gets the deferred images as paths (or, when any of
        them is not a path, the inputs as given) and must answer each with a probability.

        With ``return_stage=True`` returns ``(prob, stage)``, ``stage`` the 0-based index of the
        answering stage per image (int64; -1 where the prior answered). `progress`: see the class.
        """
        items = as_list(images)
        prob = np.full(len(items), self.prior, dtype=np.float64)
        stage = np.full(len(items), -1, dtype=np.int64)
        if self.is_cascade:
            self._route(items, batch_size, prob, stage, progress)
        else:
            X, ok = self._features(items, batch_size, self.stages[0], "predict" if progress else None)
            if ok.any():
                prob[ok], stage[ok] = self.stages[0].proba(X[ok]), 0
        return (prob, stage) if return_stage else prob

    def predict_proba(self, images, *, batch_size: int = 32, return_stage: bool = False, progress: bool = True):
        """Probabilities per image as scikit-learn returns them: shape ``(n, 2)``, columns
        P(no roadwork), P(roadwork) (classes 0 and 1); rows sum to 1.

        Column 1 is :meth:`roadwork_probability` (same inputs, batching, prior and routing); with
        ``return_stage=True`` returns ``(proba, stage)`` with the same ``stage`` as there.
        """
        from natix.calibrate.checks import two_column  # as serve's other tier-2 imports: not at module import

        prob, stage = self.roadwork_probability(images, batch_size=batch_size, return_stage=True, progress=progress)
        proba = two_column(prob)
        return (proba, stage) if return_stage else proba

    def predict(self, images, *, batch_size: int = 32, progress: bool = True) -> np.ndarray:
        """Decisions ``roadwork_probability(images) > 0.5`` as int64 (0.5 is "no roadwork", as NATIX rounds)."""
        return M.predictions(self.roadwork_probability(images, batch_size=batch_size, progress=progress))

    def _route(self, items: list, batch_size: int, prob: np.ndarray, stage: np.ndarray, progress: bool) -> None:
        """Fill `prob` and `stage` as the cascade's router answers `items` (see `roadwork_probability`)."""
        rows = np.arange(len(items))  # the images that reach the current stage
        last = len(self.thresholds)
        for k, st in enumerate(self.stages):
            desc = f"predict stage {k + 1}" if progress else None
            X, ok = self._features([items[i] for i in rows], batch_size, st, desc)
            rows = rows[ok]
            if len(rows) == 0:
                return
            p, g = st.raw(X[ok])
            answer = g >= self.thresholds[k] if k < last else np.ones(len(rows), dtype=bool)
            prob[rows[answer]], stage[rows[answer]] = p[answer], k
            rows = rows[~answer]
        if self._external is not None and len(rows):
            prob[rows], stage[rows] = self._call_external([items[i] for i in rows]), last

    def _call_external(self, inputs: list) -> np.ndarray:
        """The external stage's checked probabilities of `inputs` (paths as strings, else as given)."""
        from natix.cascade.stages import ExternalStage

        ext = self._external
        if all(isinstance(x, (str, os.PathLike)) for x in inputs):
            return ext(inputs)
        # The same checks (shape, finiteness, range) on an answer to the inputs as given.
        return ExternalStage(lambda _: ext.fn(inputs), name=ext.name)([""] * len(inputs))

    def _features(self, items: list, batch_size: int, stage: Stage,
                  desc: str | None) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[n, V, D]`` of `stage` (NaN rows for failures) and the mask of decoded images;
        the images are counted under `desc` when they span several batches (None: never)."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        for i, item in enumerate(items):
            check_input(i, item)
        f = stage.featurizer
        X = np.full((len(items), f.recipe.n_views, f.dim), np.nan, dtype=f.store_dtype)
        ok = np.zeros(len(items), dtype=bool)
        with Progress(len(items), desc or "", "img", enabled=desc is not None and len(items) > batch_size) as bar:
            for start in range(0, len(items), batch_size):
                batch = range(start, min(start + batch_size, len(items)))
                self._answer_batch(items, batch, stage, X, ok)
                bar.update(len(batch))
        return X, ok

    def _answer_batch(self, items: list, batch: range, stage: Stage, X: np.ndarray, ok: np.ndarray) -> None:
        """Fill the rows `batch` of `X` and `ok` with the features of those images that decode and stay finite."""
        decoded, rows = self._decode(items, batch)
        if len(rows) == 0:
            return
        feats = stage.features(decoded)
        finite = np.isfinite(feats).all(axis=(1, 2))
        for i in rows[~finite]:
            log.warning("image %d %s gives features that overflow %s: answering the prior %.4f", i,
                        describe(items[i]), stage.featurizer.store_dtype, self.prior)
        X[rows[finite]] = feats[finite]
        ok[rows[finite]] = True

    def _decode(self, items: list, positions) -> tuple[list[np.ndarray], np.ndarray]:
        """The decoded images among `items[positions]` and their positions; a warning for the others."""
        decoded, rows = [], []
        for i in positions:
            try:
                decoded.append(decode(items[i]))
                rows.append(i)
            except DecodeError as exc:
                log.warning("image %d %s cannot be decoded (%s): answering the prior %.4f", i,
                            describe(items[i]), exc, self.prior)
        return decoded, np.asarray(rows, dtype=np.int64)


def _per_stage(value, name: str, n: int) -> list:
    """One entry per run stage: a list of `n` entries as given, or one value repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{name} has {len(value)} entries for the bundle's {n} run stages: pass one "
                              "per stage (None for the recorded path) or a single path")
        return list(value)
    return [value] * n


def load_bundle(path, *, backbone: str | None = None, checkpoint: str | None = None,
                adapter: str | None = None, device: str = "cpu", precision: str | None = None,
                external=None, verify_key=None, progress: bool = True) -> Bundle:
    """Load and verify a bundle written by :func:`natix.serve.export.export_bundle`.

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
    external : the external last stage of a cascade bundle, as ``"module:function"`` or a
        callable ``images -> probabilities``; it must be the one the manifest declares (a
        callable by its ``module:qualname``). A bundle never imports code its caller did not
        name: loading a bundle that declares an external stage without `external` is refused.
    verify_key : bytes, or the path of a key file: refuse the bundle unless its manifest is
        signed with this key (``export_bundle(..., sign_key=...)``). Without it a signed or
        unsigned bundle loads; its hashes detect damage, not malice.
    progress : say which backbone each stage loads (its weights are read and hashed), as a detail
        (``-v``, :mod:`natix.progress`).

    Raises `DataError` for a missing or altered file, a field outside its schema or range, or a
    missing or wrong signature; `BackboneError` for weights that are not the bundle's (checked
    per stage); `ConfigError` for an `external` that is missing, not the declared one, or cannot
    be imported.
    """
    from natix.extract.featurizer import resolve_device

    path = Path(path)
    key = None if verify_key is None else read_key(verify_key, option="verify_key")
    if precision is not None and precision not in SERVED_PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}': pass {' or '.join(SERVED_PRECISIONS)} (or nothing for "
                          "the bundle's own)")
    manifest, blobs = read_manifest(path, verify_key=key)
    named = _named_external(external, external_spec(manifest), path)
    run_stages = [st for st in manifest["stages"] if "external" not in st]
    n = len(run_stages)
    where = zip(_per_stage(backbone, "backbone", n), _per_stage(checkpoint, "checkpoint", n),
                _per_stage(adapter, "adapter", n))
    dev = resolve_device(device)
    stages = []
    for k, (st, (b, c, a)) in enumerate(zip(run_stages, where)):
        if progress:
            say(f"loading backbone {b or st['backbone']['spec']}" + (f" for stage {k + 1} of {n}" if n > 1 else "")
                + " and checking its weights hash")
        stages.append(Stage.load(st, blobs, dev, where=f"stages[{k}]", root=path, backbone=b, checkpoint=c,
                                 adapter=a, precision=precision))
    if named is None:
        return Bundle(path, manifest, stages)
    from natix.cascade.stages import as_external  # the caller named it: import it now

    return Bundle(path, manifest, stages, external=as_external(named))


def _named_external(external, declared: str | None, path: Path):
    """`external` once it is checked to be the stage the manifest declares (None when there is none);
    a ``module:function`` spec is not imported here."""
    from natix.cascade.stages import as_external

    if declared is None:
        if external is not None:
            raise ConfigError(f"bundle '{path}' has no external stage: drop external= (natix predict --stage3)")
        return None
    if external is None:
        raise ConfigError(f"bundle '{path}' ends in the external stage '{declared}', which runs only when named: "
                          f"pass load_bundle(..., external='{declared}') or natix predict --stage3 {declared}")
    # A callable (or ExternalStage) is already imported by the caller; it is named by its module:qualname.
    name = external if isinstance(external, str) else as_external(external).name
    if name != declared:
        raise ConfigError(f"external stage '{name}' is not the bundle's '{declared}': pass external='{declared}' "
                          f"(natix predict --stage3 {declared}), or re-export the cascade with that stage")
    return external
