"""How well a fitted cascade does on ``val_test``, and the files ``natix cascade`` writes.

:func:`evaluate_cascade` routes ``val_test`` with a fitted :class:`natix.cascade.router.Router`
and reports accuracy, MCC, NATIX reward, per-stage reach and compute, and the deferral curve of
stage 1 vs stage 2 (:func:`deferral_table`). Its s_d is :func:`natix.metrics.deferral_curve`'s,
exact with ties averaged: the value ``natix tune-gatekeeper`` reports for the same predictions.
:func:`cascade_run` is the whole verb: load, join, fit on ``val_calib``, evaluate, write.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

from natix import metrics as M
from natix.cache.layout import DRAW_SEP, image_ids
from natix.calibrate.apply import DRAWS_CAVEAT
from natix.cascade.compute import expected_gflops, stage_compute
from natix.cascade.plots import save_curve
from natix.cascade.router import Router
from natix.cascade.stages import ExternalStage, as_external, as_stage, join_stages, load_stage
from natix.errors import ConfigError, DataError
from natix.jsonio import write_atomic, write_json
from natix.rundir import check_out, open_run

__all__ = ["CURVE_POINTS", "calibration_report", "cascade_run", "check_distinct_stages", "deferral_table",
           "evaluate_cascade", "write_cascade"]

CURVE_POINTS = 101  # stage-1 confidence quantiles sampled for the curve's table and plot


def deferral_table(labels, prob1, confidence1, prob2, *, n_points: int = CURVE_POINTS) -> dict:
    """Joint accuracy of stages 1 and 2 at stage-1 thresholds (defer when ``g_1 < tau``), and s_d.

    Parameters
    ----------
    labels, prob1, confidence1, prob2 : arrays of shape (n,)
    n_points : quantiles of ``confidence1`` used as thresholds (plus ``-inf`` and ``inf``)

    Returns
    -------
    dict of lists, one entry per distinct deferral count, by increasing deferral:
    ``threshold``, ``deferral_ratio`` r, ``joint_accuracy``, ``random_accuracy``
    ``(1 - r)·acc1 + r·acc2`` and ``ideal_accuracy`` (points of :func:`natix.metrics.deferral_curve`,
    for the table and the plot), and the scalar ``s_d`` of the exact curve over every deferral
    count (NaN when ideal = random; ``null`` in JSON).
    """
    y = np.asarray(labels, dtype=np.int64)
    g = np.asarray(confidence1, dtype=np.float64)
    curve = M.deferral_curve(1 - M.decision_errors(y, prob1), 1 - M.decision_errors(y, prob2), g)
    taus = np.concatenate([[-np.inf], np.quantile(g, np.linspace(0.0, 1.0, n_points)), [np.inf]])
    k = M.deferred_counts(g, taus)
    _, first = np.unique(k, return_index=True)  # the smallest threshold of each deferral count
    points = curve.at(k[first])
    return {"threshold": taus[first].tolist(), **{key: v.tolist() for key, v in points.items()},
            "s_d": curve.s_d}


def _scores(y: np.ndarray, p: np.ndarray) -> dict:
    return {"accuracy": M.accuracy(y, p), "mcc": M.mcc(y, p), "reward_ordered": M.ordered_rewards(y, p)[1]}


def _image_paths(stage: dict, ids: np.ndarray) -> list[str]:
    """Image paths of ``ids`` from a stage's feature cache, in the order of ``ids``."""
    from natix.cache.store import open_cache

    with open_cache(stage["cache"]["path"]) as cache:
        index = {i: r for r, i in enumerate(cache.ids.tolist())}
        rows = [index.get(i) for i in ids.tolist()]
        missing = sum(r is None for r in rows)
        if missing:
            raise DataError(f"the stage-1 cache '{cache.path}' lacks {missing} of {len(ids)} deferred image ids: "
                            "pass the run's own cache")
        return [str(cache.paths[r]) for r in rows]


def _external_answers(external: ExternalStage, first: dict, ids: np.ndarray, deferred: np.ndarray) -> np.ndarray:
    """The external stage's probabilities on the deferred rows (NaN elsewhere): it sees only those images."""
    p = np.full(len(ids), np.nan)
    rows = np.flatnonzero(deferred)
    if len(rows):
        p[rows] = external(_image_paths(first, ids[rows]))
    return p


def _compute(stages: list[dict], external: ExternalStage | None, reach: list[float]) -> dict:
    """Per-stage and expected GFLOPs per image (an external stage's compute is unknown)."""
    gflops, marginal, notes = stage_compute(stages)
    if external is not None:
        gflops.append(None)
        marginal.append(None)
        notes.append("unknown: external stage")
    total, parts = expected_gflops(reach, marginal)
    return {"expected_gflops": total, "parts": parts, "gflops_per_stage": gflops, "marginal_gflops": marginal,
            "notes": notes, "note": "backbone forward GFLOPs per image (2 x MACs); heads are not counted"}


def _per_stage(sources: list[str], router, stage: np.ndarray, prob: np.ndarray, probs: list, y: np.ndarray,
               compute: dict, n_runs: int) -> list[dict]:
    """One report per stage: reach, what it answered and how well, its threshold, the run alone, compute."""
    K = len(sources)
    rows = []
    for k in range(K):
        answered = stage == k
        rows.append({
            "stage": k + 1, "source": sources[k], "reach": float((stage >= k).mean()),
            "answered": float(answered.mean()), "n_answered": int(answered.sum()),
            "accuracy_answered": M.accuracy(y[answered], prob[answered]) if answered.any() else None,
            "threshold": router.thresholds_[k] if k < K - 1 else None,
            "alone": _scores(y, probs[k]) if k < n_runs else None,
            "gflops": compute["gflops_per_stage"][k], "marginal_gflops": compute["marginal_gflops"][k],
            "compute_note": compute["notes"][k],
        })
    return rows


def evaluate_cascade(stage_runs: Sequence, router, *, stage3=None) -> dict:
    """Run a fitted router on ``val_test`` and measure the cascade.

    Parameters
    ----------
    stage_runs : list of run directories (or :func:`natix.cascade.stages.load_stage` dicts), stage 1 first
    router : a fitted :class:`natix.cascade.router.Router` with ``len(stage_runs)`` stages (+ 1 with ``stage3``)
    stage3 : ``"module:function"``, a callable ``images -> probabilities`` or an
        :class:`natix.cascade.stages.ExternalStage`, optional; it receives the stage-1 cache's image
        paths of the samples deferred to it, and nothing when none is

    Returns
    -------
    dict: ``n``, ``accuracy``, ``mcc``, ``reward_ordered`` (mean over the windows, val_test in its
    stored order), ``thresholds``, ``stages`` (per stage: source, reach, answered, accuracy on
    the answered samples, the run's own scores alone, GFLOPs), ``deferral`` (fraction reaching
    each stage), ``compute`` (expected GFLOPs per image, None when a reached stage's compute is
    unknown), ``curve`` (:func:`deferral_table` of stage 1 vs the stage-2 run), and
    ``predictions`` (numpy ``ids``, ``labels``, ``prob``, ``stage``; not JSON).
    """
    check_is_fitted(router, "thresholds_")
    stages = [as_stage(s) for s in stage_runs]
    check_distinct_stages([s["run"] for s in stages])
    stages = join_stages(stages)
    if len(stages) < 2 and stage3 is None:
        raise ConfigError("a cascade needs at least two stages: pass two runs, or one run and stage3")
    external = None if stage3 is None else as_external(stage3)
    K = len(stages) + (external is not None)
    if router.n_stages_ != K:
        raise ConfigError(f"the router was fitted for {router.n_stages_} stages, but {K} were given")
    test = [s["val_test"] for s in stages]
    ids, y = test[0]["ids"], test[0]["labels"]
    confidences = [t["confidence"] for t in test][:K - 1]
    probs = [t["prob"] for t in test]
    stage = router.route(confidences)
    if external is not None:
        probs.append(_external_answers(external, stages[0], ids, stage == K - 1))
    prob = router.roadwork_probability(probs, confidences)
    reach = [float((stage >= k).mean()) for k in range(K)]
    compute = _compute(stages, external, reach)
    sources = [str(s["run"]) for s in stages] + ([external.name] if external is not None else [])
    return {
        "split": "val_test", "n": len(y), **_scores(y, prob),
        "mode": router.mode_, "thresholds": list(router.thresholds_),
        "deferral": reach[1:], "stages": _per_stage(sources, router, stage, prob, probs, y, compute, len(stages)),
        "compute": compute,
        "curve": deferral_table(y, probs[0], test[0]["confidence"], probs[1]) if len(stages) >= 2 else None,
        "predictions": {"ids": ids, "labels": y, "prob": prob, "stage": stage},
    }


def check_distinct_stages(runs: Sequence) -> None:
    """Refuse a run that appears twice among the stages (a cascade of a run with itself defers for nothing)."""
    seen: dict[Path, int] = {}
    for k, run in enumerate(runs, start=1):
        where = Path(run).resolve()
        if where in seen:
            raise ConfigError(f"--stage{seen[where]} and --stage{k} are the same run '{Path(runs[seen[where] - 1])}': "
                              f"pass a different (stronger) run as stage {k}")
        seen[where] = k


def check_same_conditions(stages: Sequence[dict], external: bool) -> None:
    """Refuse stages judged under different challenges (their rows would pair different images),
    and an external stage on challenge draws (it answers image files; a draw has none)."""
    conditions = {json.dumps([(s.get("under") or {}).get("recipe"), (s.get("under") or {}).get("draws", 1)])
                  for s in stages}
    if len(conditions) > 1:
        raise ConfigError("the stages are judged under different conditions (challenge recipe, seed or draws, or "
                          "one without --under): pass one cache per stage made with the same --challenge, --seed and "
                          "--draws")
    if external and any(DRAW_SEP in str(s["val_test"]["ids"][0]) for s in stages if len(s["val_test"]["ids"])):
        raise ConfigError("an external stage 3 answers image files, and these rows are challenge draws without files "
                          "of their own: drop --stage3, or judge the cascade on clean caches")


def calibration_report(router, n_calib: int, *, external: bool, draws: bool = False) -> dict:
    """What a fitted router's thresholds were chosen on, by which procedure, with which guarantee
    (`draws`: the calibration rows are challenge draws, several per image)."""
    if router.mode_ == "certified":
        procedure = ("LTT (selective risk) per stage on the val_calib rows that reach it"
                     + (f"; rows split at random into {router.n_stages_ - 1} disjoint folds, one per certified stage"
                        if router.n_stages_ > 2 else "; one certified stage, all rows"))
        guarantee = (f"per certified stage: P(error | stage answers) <= {router.target_risk} with probability >= "
                     f"{1 - router.delta:g} over the calibration draw; the last stage is not certified"
                     + (DRAWS_CAVEAT if draws else ""))
    else:
        procedure = (f"NATIX-reward grid search on val_calib, each stage deferring at most {router.budget} of its "
                     "arrivals" + ("; the external last stage has no calibration data: the stage before it spends "
                                   "the full budget" if external else ""))
        guarantee = "none (the budget holds on val_calib, approximately on new data)"
    return {"split": "val_calib", "n": n_calib, "procedure": procedure, "guarantee": guarantee,
            "n_per_stage": router.n_calibration_, "reach": router.reach_calib_,
            "certified": router.certified_, "reward": router.reward_calib_,
            "reward_stage1_alone": router.reward_stage1_calib_}


def write_cascade(out: Path, result: dict, *, router, calibration: dict, sources: list[str],
                  confidences: list[str], under: list | None = None) -> dict:
    """Write cascade.json, the curve's CSV and PNG and cascade_predictions.npz into `out`; return the
    content of cascade.json (its ``files`` lists the four paths).

    cascade.json is strict JSON (:func:`natix.jsonio.write_json`): an undefined s_d is ``null``,
    an infinite threshold ``"inf"``. ``under`` records, per stage, the cache its scores were
    judged under (None: the run's own predictions).
    """
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = save_curve(result, out)
    pred = result["predictions"]
    buf = io.BytesIO()
    np.savez(buf, ids=pred["ids"].astype(str), labels=pred["labels"], prob=pred["prob"], stage=pred["stage"])
    write_atomic(out / "cascade_predictions.npz", buf.getvalue())
    files = [str(out / "cascade.json"), str(csv_path), str(png_path), str(png_path.with_suffix(".json")),
             str(out / "cascade_predictions.npz")]
    doc = {"mode": router.mode_,
           "router": {**router.get_params(), "thresholds": router.thresholds_},
           "stages": sources, "under": under, "confidence": confidences, "calibration": calibration,
           "metrics": {k: result[k] for k in ("split", "n", "accuracy", "mcc", "reward_ordered", "deferral")},
           "per_stage": result["stages"], "compute": result["compute"],
           "s_d": result["curve"]["s_d"], "files": files}
    write_json(out / "cascade.json", doc)
    return doc


def cascade_run(stage1, stage2, *, stage3=None, target_risk: float | None = None, delta: float = 0.1,
                budget: float | None = None, out=None) -> dict:
    """Load, join, fit the router on ``val_calib``, evaluate on ``val_test``, write the results.

    Writes into ``out`` (default ``<stage1>/cascade``): ``cascade.json`` (strict JSON: mode,
    thresholds, stage sources, calibration procedure, metrics, compute, s_d),
    ``cascade_curve.csv``, ``cascade_curve.png`` (with the numbers it drew in ``cascade_curve.json``)
    and ``cascade_predictions.npz`` (ids, labels,
    prob, stage per val_test image). Returns the :func:`evaluate_cascade` dict plus ``router``,
    ``calibration``, ``out``, ``files`` and ``document`` (the content of cascade.json).
    """
    router = Router(target_risk=target_risk, delta=delta, budget=budget)
    router.check_params()  # option errors before any file is read
    stage1, stage2 = open_run(stage1), open_run(stage2)  # runs as given, or opened under caches
    check_distinct_stages([stage1.path, stage2.path])
    out = check_out(out if out is not None else stage1.path / "cascade", run=False)
    external = None if stage3 is None else as_external(stage3)
    loaded = [load_stage(stage1), load_stage(stage2)]
    check_same_conditions(loaded, external is not None)
    stages = join_stages(loaded)
    router.fit([s["val_calib"] for s in stages] + ([None] if external is not None else []))
    result = evaluate_cascade(stages, router, stage3=external)
    calib_ids = stages[0]["val_calib"]["ids"]
    calibration = calibration_report(router, len(calib_ids), external=external is not None,
                                     draws=len(np.unique(image_ids(calib_ids))) < len(calib_ids))
    document = write_cascade(
        out, result, router=router, calibration=calibration,
        sources=[str(stage1.path), str(stage2.path)] + ([external.name] if external is not None else []),
        confidences=[s["confidence"] for s in stages] + (["none (last stage)"] if external is not None else []),
        under=[s["under"] for s in stages])
    return {**result, "router": router, "calibration": calibration, "out": out, "files": document["files"],
            "document": document}
