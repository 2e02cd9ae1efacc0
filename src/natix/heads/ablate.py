"""Ablation: every arm of caches × heads × aggregators × policies × seeds, one leaderboard.

Features are loaded once. Each arm is trained per seed on `train` (early stopping on
`val_select`) and scored on `val_test`. With several caches of the same images (clean and
challenge draws, frozen and adapted backbones) the cache an arm trains on is a factor; splits
are made once and applied by image id, and every arm is judged on the same rows: the `val_test`
rows of the first cache, or of the `under` cache (e.g. validator-e1 draws). Every column of an arm's row is one estimand: the mean
over seeds of the per-seed metric on `val_test`. For the chosen metric the row adds a bootstrap
CI of that same mean (resampling `val_test` rows and, with >= 2 seeds, seeds; BCa below 500 rows)
and Δ = row value − baseline row value, whose CI applies the same row and seed resamples to both
arms, seed i paired with seed i (`natix.metrics.seed_bootstrap_ci`).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import multiprocessing as mp
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.errors import ConfigError
from natix.heads.runs import (
    Dataset,
    check_same_features,
    draw_groups,
    feature_source,
    load_dataset,
    resolve_splits,
)
from natix.heads.splits import DEFAULT_RATIOS
from natix.jsonio import write_json
from natix.rundir import check_out, confidence

log = logging.getLogger(__name__)

TABLE_METRICS = ("auroc", "mcc", "accuracy", "nll", "ece", "augrc", "reward_ordered", "reward_expected")
# Metrics with a leaderboard CI. Binned ECE is left out: resampled rows bias it upward, so its
# bootstrap interval can miss the row's own value.
CI_METRICS = {"auroc": M.auroc, "mcc": M.mcc, "accuracy": M.accuracy, "nll": M.nll, "brier": M.brier,
              "balanced_accuracy": M.balanced_accuracy, "auprc": M.auprc}


@dataclass(frozen=True)
class Arm:
    head: str
    agg: str
    policy: str
    cache: str = ""  # the label of the cache it trains on; "" when there is one cache

    @property
    def name(self) -> str:
        model = f"{self.head}/{self.agg}/{self.policy}"
        return f"{self.cache}:{model}" if self.cache else model


@dataclass
class Sources:
    """The caches arms train on (label → dataset and split rows) and what each is judged on (label →
    dataset and its val_test rows: the same images, in the same order, for every arm)."""

    train: dict[str, tuple[Dataset, dict]]
    judges: dict[str, tuple[Dataset, np.ndarray]]
    judge_label: str  # the judging cache's label ("" when each arm is judged on its own cache)

    @property
    def first(self) -> tuple[Dataset, np.ndarray]:
        return next(iter(self.judges.values()))


def cache_labels(paths) -> list[str]:
    """A short label per cache file: its challenge recipe ("clean" without one), with the backbone's
    adapter or weights hash when the caches come from different feature extractors, and the file
    stem when two still share a label (reads only the small tables)."""
    from natix.cache.store import open_cache

    identities = []
    for p in paths:
        with open_cache(p) as c:
            identities.append(c.identity)
    names = [(i.get("challenge") or {}).get("name", "clean") for i in identities]
    if len({json.dumps(feature_source(i), sort_keys=True) for i in identities}) > 1:
        names = [f"{n}/{_extractor_tag(i)}" for n, i in zip(names, identities)]
    return [n if names.count(n) == 1 else f"{n}[{Path(p).stem}]" for n, p in zip(names, paths)]


def _extractor_tag(identity: dict) -> str:
    """The backbone part of a label: its adapter's hash, else its weights' hash (8 hex digits)."""
    backbone = identity.get("backbone") or {}
    if backbone.get("adapter"):
        return f"adapter-{backbone['adapter']['weights_sha256'][:8]}"
    return f"weights-{str(backbone.get('weights_sha256', 'none'))[:8]}"


def cache_paths(features) -> list:
    """The cache path(s) of an ablation: one path, a list of caches of the same images, or a dict
    of them by name."""
    if isinstance(features, dict):
        return list(features.values())
    return [features] if isinstance(features, (str, Path)) or features is None else list(features)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def arm_cache_labels(features, paths) -> list[str]:
    """The cache label of each path: the names of a dict of caches, else :func:`cache_labels`; ""
    for a single cache (no cache factor)."""
    if len(paths) == 1:
        return [""]
    if not isinstance(features, dict):
        return cache_labels(paths)
    for name in features:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"cache name {name!r} is not a plain name: use letters, digits and _.+- "
                              "(e.g. frozen=A.h5,lora=B.h5)")
    return list(features)


def load_sources(features, under=None, *, ratios=DEFAULT_RATIOS, split_seed: int = 0, verify: bool = True,
                 data: Dataset | None = None) -> tuple[Sources, object]:
    """The caches of an ablation (one path or several of the same images) and its splits (made on the first)."""
    paths = cache_paths(features)
    datasets = [data or load_dataset(paths[0], verify=verify)] + [load_dataset(p, verify=verify) for p in paths[1:]]
    labels = arm_cache_labels(features, [d.path for d in datasets])
    splits = resolve_splits(datasets[0], ratios=ratios, seed=split_seed)
    owner = f"the splits of '{datasets[0].path}'"
    train = {lab: (d, splits.rows(d.images, cache=d.path, owner=owner)) for lab, d in zip(labels, datasets)}
    mixed = len({json.dumps(feature_source(d.identity), sort_keys=True) for d in datasets}) > 1
    if mixed and under is None:  # frozen vs adapted backbones: each arm judged on its own cache's val_test
        judges = {lab: (d, rows["val_test"]) for lab, (d, rows) in train.items()}
        _check_same_test_images(judges)
        return Sources(train, judges, ""), splits
    resolved = {Path(d.path).resolve(): d for d in datasets}
    judge = datasets[0] if under is None else resolved.get(Path(under).resolve()) or load_dataset(under, verify=verify)
    for d in datasets:
        check_same_features(d.identity, judge.identity, f"caches '{d.path}' and '{judge.path}'")
        if d.view_names != judge.view_names or d.X.shape[2] != judge.X.shape[2]:
            raise ConfigError(f"cache '{d.path}' has views {d.view_names} × {d.X.shape[2]} dims, the judging cache "
                              f"'{judge.path}' {judge.view_names} × {judge.X.shape[2]}: extract every cache with "
                              "the same backbone and --views")
    test_rows = splits.rows(judge.images, cache=judge.path, owner=owner)["val_test"]
    judge_label = ""
    if under is not None or len(datasets) > 1:
        named = [lab for lab, d in zip(labels, datasets) if d is judge and isinstance(features, dict)]
        judge_label = named[0] if named else cache_labels([judge.path])[0]
    return Sources(train, {lab: (judge, test_rows) for lab in train}, judge_label), splits


def _check_same_test_images(judges: dict) -> None:
    """Refuse caches whose val_test rows are not the same images with the same labels in the same order
    (the paired bootstrap pairs them row by row)."""
    (d0, r0), *rest = judges.values()
    for d, r in rest:
        if not (np.array_equal(d.images[r], d0.images[r0]) and np.array_equal(d.labels[r], d0.labels[r0])):
            raise ConfigError(f"caches '{d0.path}' and '{d.path}' hold different val_test rows (other images, "
                              "labels or draws): extract them from the same images with the same challenge")


@dataclass(frozen=True)
class Leaderboard:
    """What :func:`ablate` wrote: the rows (best first), the run facts and the markdown table."""

    out: Path  # the directory holding leaderboard.csv, leaderboard.md and leaderboard.json
    rows: list[dict]
    meta: dict
    markdown: str  # the content of leaderboard.md

def _train_arm(arm: Arm, seeds: tuple[int, ...], head_cfg, train_cfg, sources: Sources) -> list[dict]:
    """Every seed of one arm, trained together on its cache; each seed's predictions on the judged rows."""
    from natix.heads.fitting import RowView, fit_heads

    data, rows = sources.train[arm.cache]
    t0 = time.perf_counter()
    head = dataclasses.replace(head_cfg, head=arm.head, agg=arm.agg, policy=arm.policy)
    fitted = fit_heads(RowView(data.X, rows["train"]), data.labels[rows["train"]],
                       RowView(data.X, rows["val_select"]), data.labels[rows["val_select"]], head, train_cfg,
                       seeds=seeds)
    out = []
    for f in fitted:
        judge, test_rows = sources.judges[arm.cache]
        pred = f.predict(RowView(judge.X, test_rows), view_logits=False)  # scores only
        out.append({"prob": pred["prob"], "conf": confidence(pred), "epochs": f.history["epochs"],
                    "seconds": time.perf_counter() - t0})  # the whole arm's time, all seeds together
    return out


def _cost(arm: Arm, head_cfg) -> int:
    """Rough cost rank for scheduling the expensive arms first: torch over every view > numpy > pooled rows."""
    head = dataclasses.replace(head_cfg, head=arm.head, agg=arm.agg, policy=arm.policy)
    if head.pooled:
        return 0
    return 1 if head.view_linear else 2


_SHARED: dict = {}


def _init_worker(sources: Sources, threads: int):
    """Forked workers inherit the features without copying them, and cap their own threads."""
    _SHARED["sources"] = sources
    from natix.heads.config import limit_threads

    _SHARED["limit"] = limit_threads(threads)
    _SHARED["limit"].__enter__()


def _train_arm_shared(job):
    arm, seeds, head_cfg, train_cfg = job
    return arm, _train_arm(arm, seeds, head_cfg, train_cfg, _SHARED["sources"])


def job_threads(jobs: int, threads: int) -> int:
    """Threads per job such that threads × jobs <= cores; an explicit product above that is refused."""
    from natix.heads.config import available_cores

    cores = available_cores()
    if jobs > cores:
        raise ConfigError(f"--jobs {jobs} exceeds the {cores} core(s) this process may use: pass --jobs {cores} "
                          "or fewer")
    if threads and threads * jobs > cores:
        raise ConfigError(f"--threads {threads} x --jobs {jobs} = {threads * jobs} exceeds the {cores} core(s) "
                          f"this process may use: pass --threads {max(cores // jobs, 1)} or fewer jobs")
    per_job = threads or max(cores // jobs, 1)
    if jobs > 1 and per_job > 1 and "torch" in sys.modules:
        # GNU OpenMP cannot start a thread team in a child forked after the parent used one.
        log.info("torch is already loaded in this process: forked ablation workers use 1 thread each")
        per_job = 1
    return per_job


def ablate(features, out, *, heads=("linear",), aggs=("mean",), policies=("softmax",), seeds: int = 1,
           metric: str = "mcc", baseline: str | None = None, jobs: int = 1, head_cfg=None, train_cfg=None,
           ratios=DEFAULT_RATIOS, split_seed: int = 0, n_boot: int = 1000, progress: bool = True,
           data: Dataset | None = None, verify: bool = True, under=None) -> Leaderboard:
    """Train every arm and write ``leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.json`` into `out`.

    `features` is one cache or a list of caches of the same images (the cache becomes a factor of
    the grid, labelled by recipe and extractor), or a dict of them by name (e.g. ``{"frozen": a,
    "lora": b}``: the names label the arms); arms are judged on the `val_test` rows of the first cache, or of `under`. Returns
    the :class:`Leaderboard` it wrote (rows sorted by `metric`, best first, and the markdown).
    Caches are checked as :func:`natix.heads.runs.load_dataset` does (``verify=False`` skips
    their features checksum).
    """
    from natix.heads.config import HeadConfig, TrainConfig

    if metric not in M.METRIC_NAMES:
        raise ConfigError(f"unknown metric '{metric}': pass one of {', '.join(M.METRIC_NAMES)}")
    if seeds < 1 or jobs < 1:
        raise ConfigError("--seeds and --jobs must be >= 1")
    head_cfg = head_cfg or HeadConfig()
    train_cfg = train_cfg or TrainConfig()
    if not heads or not aggs or not policies:
        raise ConfigError("ablate needs at least one head, one aggregator and one policy: e.g. --head linear "
                          "--agg mean --policy softmax")
    for h, a, p in itertools.product(heads, aggs, policies):  # validate names before any training
        dataclasses.replace(head_cfg, head=h, agg=a, policy=p)
    threads = job_threads(jobs, train_cfg.threads)
    train_cfg = dataclasses.replace(train_cfg, threads=threads)  # every fit inside a job keeps to its share
    for h, a, p in itertools.product(heads, aggs, policies):  # an optimizer that does not fit fails here
        train_cfg.engine(dataclasses.replace(head_cfg, head=h, agg=a, policy=p))
    check_out(out, run=False)  # an --out that cannot be written fails before any training
    paths = cache_paths(features)
    labels = arm_cache_labels(features, paths)
    arms = list(dict.fromkeys(Arm(h, a, p, c) for c, h, a, p in itertools.product(labels, heads, aggs, policies)))
    names = [a.name for a in arms]
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"baseline '{baseline}' is not an arm: pass one of {', '.join(names)}")
    sources, splits = load_sources(features, under, ratios=ratios, split_seed=split_seed, verify=verify, data=data)
    judge, test_rows = sources.first
    y = judge.labels[test_rows]
    seed_list = tuple(train_cfg.seed + s for s in range(seeds))
    schedule = sorted(arms, key=lambda a: _cost(a, head_cfg), reverse=True)  # expensive first: jobs end together
    t0 = time.perf_counter()
    results = _train_arms(schedule, (seed_list, head_cfg, train_cfg), sources, jobs, threads, progress)
    groups = draw_groups(judge.ids[test_rows])
    board = leaderboard(arms, results, y, metric, baseline, n_boot, seed=split_seed, groups=groups)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(sources.train.values()))[0]
    meta = {"cache": str(first.path), "fingerprint": first.fingerprint, "jobs": jobs, "threads_per_job": threads,
            "caches": {lab or "": str(d.path) for lab, (d, _) in sources.train.items()},
            "judged_on": {"cache": str(judge.path) if sources.judge_label else "each arm's own cache",
                          "label": sources.judge_label, "rows": int(len(test_rows)),
                          "images": int(len(np.unique(judge.images[test_rows])))},
            "arm_seconds": {a: r[0]["seconds"] for a, r in results.items()}, "seeds": seeds,
            "n_val_test": int(len(y)), "seconds": time.perf_counter() - t0, "split_digest": splits.digest}
    return Leaderboard(out, board, meta, write_leaderboard(board, out, metric, baseline, meta))


def _train_arms(schedule: list[Arm], job: tuple, sources: Sources, jobs: int, threads: int,
                progress: bool) -> dict[str, list]:
    """Each arm's per-seed results, by arm name: in this process, or in `jobs` forked workers that
    share the features. `job` is (seeds, head config, train config)."""
    results: dict[str, list] = {}
    bar = _bar(len(schedule), progress)
    if jobs == 1:
        from natix.heads.config import limit_threads

        with limit_threads(threads):
            for arm in schedule:
                results[arm.name] = _train_arm(arm, *job, sources)
                bar.update(1)
    else:
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(sources, threads)) as pool:
            futures = [pool.submit(_train_arm_shared, (a, *job)) for a in schedule]
            for fut in as_completed(futures):
                arm, preds = fut.result()
                results[arm.name] = preds
                bar.update(1)
    bar.close()
    return results


def leaderboard(arms, results, y, metric, baseline, n_boot, seed, groups=None):
    """One row per arm: each metric's mean over seeds on val_test and, for `metric`, a bootstrap CI
    of that same mean and the difference to the baseline row (`natix.metrics.seed_bootstrap_ci`;
    with `groups`, the image of each row, whole images are resampled)."""
    board = []
    for a in arms:
        per_seed = [M.split_metrics(y, r["prob"], r["conf"]) for r in results[a.name]]
        row = {"arm": a.name, "cache": a.cache, "head": a.head, "agg": a.agg, "policy": a.policy, "seeds": len(per_seed),
               "epochs": float(np.mean([r["epochs"] for r in results[a.name]]))}
        for m in M.METRIC_NAMES:
            vals = np.array([s[m] for s in per_seed])
            row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        board.append(row)
    fn = CI_METRICS.get(metric)
    if fn is not None:
        base = next(r for r in board if r["arm"] == baseline)
        reference = np.stack([r["prob"] for r in results[baseline]])

        def add_ci(a, row):
            # exactly the difference of the two row values, so it has that difference's sign
            row["diff"] = row[metric] - base[metric]
            row[f"{metric}_ci"], row["diff_ci"], row["ci_method"] = [float("nan")] * 2, [float("nan")] * 2, None
            try:
                res = M.seed_bootstrap_ci(fn, y, np.stack([r["prob"] for r in results[a.name]]),
                                          reference=reference, n_boot=n_boot, seed=seed, groups=groups)
            except M.UndefinedMetricError:  # e.g. AUROC when val_test holds one class: NaN CIs
                return
            row[f"{metric}_ci"], row["diff_ci"] = [res.low, res.high], [res.diff_low, res.diff_high]
            row["ci_method"] = res.method

        # numpy releases the GIL in the batched resamples: arms side by side on every core
        from concurrent.futures import ThreadPoolExecutor

        from natix.heads.config import available_cores, limit_threads

        with limit_threads(1), ThreadPoolExecutor(available_cores()) as pool:
            list(pool.map(add_ci, arms, board))
    sign = 1 if metric in M.LOWER_IS_BETTER else -1
    board.sort(key=lambda r: sign * (r[metric] if np.isfinite(r[metric]) else np.inf * sign))
    return board


def write_leaderboard(board: list[dict], out: Path, metric: str, baseline: str, meta: dict) -> str:
    """Write ``leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.json`` into `out`; return the markdown."""
    cols = ["arm", "cache", "head", "agg", "policy", "seeds", "epochs", *M.METRIC_NAMES]
    with open(out / "leaderboard.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols + [f"{metric}_ci_low", f"{metric}_ci_high", f"diff_vs_baseline_{metric}",
                           "diff_ci_low", "diff_ci_high"])
        for r in board:
            ci = r.get(f"{metric}_ci", [float("nan")] * 2)
            dci = r.get("diff_ci", [float("nan")] * 2)
            w.writerow([r[c] for c in cols] + [ci[0], ci[1], r.get("diff", float("nan")), dci[0], dci[1]])
    judged = meta.get("judged_on") or {"label": "", "rows": meta["n_val_test"], "images": meta["n_val_test"]}
    where = (f"{judged['rows']} val_test rows ({judged['images']} images) of {judged['label']} "
             f"`{judged['cache']}`" if judged["label"] else f"{meta['n_val_test']} val_test images")
    rows = "val_test images (all draws of an image together)" if judged["rows"] > judged["images"] else "val_test rows"
    methods = sorted({r["ci_method"] for r in board if r.get("ci_method")})
    many = meta["seeds"] > 1
    delta = f"Δ: the row's {metric} minus that of `{baseline}`"
    if methods:
        kind = " / ".join({"bca": "BCa", "percentile": "percentile"}[m] for m in methods)
        drawn = f"{rows} and seeds, both" if many else rows
        paired = "rows shared, seed i paired with the baseline's seed i" if many else "rows shared"
        note = (f"{metric} 95% CI: {kind} bootstrap of that same seed mean: each resample draws {drawn} with "
                f"replacement, recomputes each drawn seed's {metric} on the drawn rows and averages over the drawn "
                f"seeds. {delta}; its CI applies the same resamples to both arms ({paired}); * marks a Δ CI that "
                "excludes 0.")
    else:
        note = f"No bootstrap CI for {metric}. {delta}."
    lines = [f"# Ablation leaderboard ({meta['seeds']} seed(s), judged on {where})", "",
             f"Sorted by {metric}. Metrics are fractions (not x1000); each cell is the mean over seeds of the "
             f"metric of one seed's val_test predictions. {note}", "",
             *(f"{k}: {text}." for k, text in M.REWARD_DEFINITIONS.items() if k in TABLE_METRICS), "",
             "| arm | " + " | ".join(TABLE_METRICS) + f" | {metric} 95% CI | Δ{metric} vs baseline |",
             "|" + "---|" * (len(TABLE_METRICS) + 3)]
    for r in board:
        ci = r.get(f"{metric}_ci", [float("nan")] * 2)
        d, dci = r.get("diff", float("nan")), r.get("diff_ci", [float("nan")] * 2)
        star = "*" if np.isfinite(dci[0]) and (dci[0] > 0 or dci[1] < 0) else ""
        cells = " | ".join(f"{r[m]:.4f}" for m in TABLE_METRICS)
        lines.append(f"| {r['arm']} | {cells} | [{ci[0]:.4f}, {ci[1]:.4f}] | "
                     f"{d:+.4f} [{dci[0]:+.4f}, {dci[1]:+.4f}]{star} |")
    caches = ", ".join(f"{lab} `{path}`" for lab, path in meta["caches"].items()) if len(meta.get("caches", {})) > 1 \
        else f"`{meta['cache']}` ({meta['fingerprint'][:16]})"
    lines += ["", f"trained on {caches}; splits {meta['split_digest'][:12]} (by image id), {meta['seconds']:.1f} s"]
    markdown = "\n".join(lines) + "\n"
    (out / "leaderboard.md").write_text(markdown)
    write_json(out / "leaderboard.json", {"meta": meta, "rows": board})
    return markdown


def _bar(total: int, enabled: bool):
    from natix.progress import Progress

    return Progress(total, "ablate", "arm", enabled=enabled)
