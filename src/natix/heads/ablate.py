"""Ablation: every arm of heads × aggregators × policies × seeds on one cache, one leaderboard.

Features are loaded once. Each arm is trained per seed on `train` (early stopping on
`val_select`) and scored on `val_test`. An arm's row reports the mean over seeds of each
metric, a percentile bootstrap CI over `val_test` rows of the metric of the seed-averaged
probabilities, and the paired bootstrap difference of the chosen metric against the baseline
arm (same resampled rows for both arms).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.errors import ConfigError
from natix.heads.runs import LOWER_IS_BETTER, METRIC_NAMES, Dataset, compute_metrics, confidence, load_dataset, \
    resolve_splits
from natix.heads.splits import DEFAULT_RATIOS

TABLE_METRICS = ("auroc", "mcc", "accuracy", "nll", "ece", "augrc", "natix_reward")
_BOOT = {"auroc": M.auroc, "mcc": M.mcc, "accuracy": M.accuracy, "nll": M.nll, "brier": M.brier,
         "balanced_accuracy": M.balanced_accuracy, "auprc": M.auprc, "ece": M.ece}


@dataclass(frozen=True)
class Arm:
    head: str
    agg: str
    policy: str

    @property
    def name(self) -> str:
        return f"{self.head}/{self.agg}/{self.policy}"


def _train_arm(job):
    """One (arm, seed): returns the val_test prediction dict."""
    import torch

    from natix.heads.train import fit, predict

    arm, seed, head_cfg, train_cfg, data, rows, threads = job
    if threads:
        torch.set_num_threads(threads)
    head = dataclasses.replace(head_cfg, head=arm.head, agg=arm.agg, policy=arm.policy)
    train = dataclasses.replace(train_cfg, seed=seed)
    model, history = fit(data.X[rows["train"]], data.labels[rows["train"]], data.X[rows["val_select"]],
                         data.labels[rows["val_select"]], head, train)
    pred = predict(model, data.X[rows["val_test"]], device=train.device)
    return arm, seed, {"prob": pred["prob"], "conf": confidence(pred), "epochs": history["epochs"]}


_SHARED: dict = {}


def _init_worker(data, rows):
    """Forked workers inherit the features without copying them."""
    _SHARED["data"], _SHARED["rows"] = data, rows


def _train_arm_shared(job):
    arm, seed, head_cfg, train_cfg = job
    return _train_arm((arm, seed, head_cfg, train_cfg, _SHARED["data"], _SHARED["rows"], 1))


def ablate(features, out, *, heads=("linear",), aggs=("mean",), policies=("softmax",), seeds: int = 1,
           metric: str = "mcc", baseline: str | None = None, jobs: int = 1, head_cfg=None, train_cfg=None,
           ratios=DEFAULT_RATIOS, split_seed: int = 0, n_boot: int = 1000, progress: bool = True,
           data: Dataset | None = None) -> list[dict]:
    """Train every arm and write ``leaderboard.csv`` and ``leaderboard.md`` into `out`."""
    from natix.heads.train import HeadConfig, TrainConfig

    if metric not in METRIC_NAMES:
        raise ConfigError(f"unknown metric '{metric}': pass one of {', '.join(METRIC_NAMES)}")
    if seeds < 1 or jobs < 1:
        raise ConfigError("--seeds and --jobs must be >= 1")
    head_cfg = head_cfg or HeadConfig()
    train_cfg = train_cfg or TrainConfig()
    if not heads or not aggs or not policies:
        raise ConfigError("ablate needs at least one head, one aggregator and one policy: e.g. --head linear "
                          "--agg mean --policy softmax")
    arms = list(dict.fromkeys(Arm(h, a, p) for h, a, p in itertools.product(heads, aggs, policies)))
    for arm in arms:  # validate names before any training
        dataclasses.replace(head_cfg, head=arm.head, agg=arm.agg, policy=arm.policy)
    names = [a.name for a in arms]
    baseline = baseline or names[0]
    if baseline not in names:
        raise ConfigError(f"baseline '{baseline}' is not an arm: pass one of {', '.join(names)}")
    data = data or load_dataset(features)
    splits = resolve_splits(data, ratios=ratios, seed=split_seed)
    rows = splits.rows(data.ids)
    y = data.labels[rows["val_test"]]
    jobs_list = [(arm, train_cfg.seed + s) for arm in arms for s in range(seeds)]
    results: dict[str, list] = {a.name: [] for a in arms}
    t0 = time.perf_counter()
    bar = _bar(len(jobs_list), progress)
    if jobs == 1:
        for arm, seed in jobs_list:
            arm, seed, pred = _train_arm((arm, seed, head_cfg, train_cfg, data, rows, 0))
            results[arm.name].append(pred)
            bar.update(1)
    else:
        ctx = mp.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(data, rows)) as pool:
            for arm, seed, pred in pool.map(_train_arm_shared,
                                            [(a, s, head_cfg, train_cfg) for a, s in jobs_list]):
                results[arm.name].append(pred)
                bar.update(1)
    bar.close()
    board = _leaderboard(arms, results, y, metric, baseline, n_boot, seed=split_seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write(board, out, metric, baseline, meta={"cache": str(data.path), "fingerprint": data.fingerprint,
                                                "seeds": seeds, "n_val_test": int(len(y)),
                                                "seconds": time.perf_counter() - t0,
                                                "split_digest": splits.digest})
    return board


def _leaderboard(arms, results, y, metric, baseline, n_boot, seed):
    """One row per arm: seed-mean metrics, bootstrap CI of the chosen metric, paired diff."""
    avg = {a.name: np.mean([r["prob"] for r in results[a.name]], axis=0) for a in arms}
    base_prob = avg[baseline]
    fn = _BOOT.get(metric)
    board = []
    for a in arms:
        per_seed = [compute_metrics(y, r["prob"], r["conf"]) for r in results[a.name]]
        row = {"arm": a.name, "head": a.head, "agg": a.agg, "policy": a.policy, "seeds": len(per_seed),
               "epochs": float(np.mean([r["epochs"] for r in results[a.name]]))}
        for m in METRIC_NAMES:
            vals = np.array([s[m] for s in per_seed])
            row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        if fn is not None:
            _, lo, hi = M.bootstrap_ci(fn, y, avg[a.name], n_boot=n_boot, seed=seed)
            row[f"{metric}_ci"] = [lo, hi]
            if a.name == baseline:
                row["diff"], row["diff_ci"] = 0.0, [0.0, 0.0]
            else:
                d, lo, hi = M.paired_bootstrap_diff(fn, y, avg[a.name], base_prob, n_boot=n_boot, seed=seed)
                row["diff"], row["diff_ci"] = d, [lo, hi]
        board.append(row)
    sign = 1 if metric in LOWER_IS_BETTER else -1
    board.sort(key=lambda r: sign * (r[metric] if np.isfinite(r[metric]) else np.inf * sign))
    return board


def _write(board, out: Path, metric: str, baseline: str, meta: dict) -> None:
    cols = ["arm", "head", "agg", "policy", "seeds", "epochs", *METRIC_NAMES]
    with open(out / "leaderboard.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols + [f"{metric}_ci_low", f"{metric}_ci_high", f"diff_vs_baseline_{metric}",
                           "diff_ci_low", "diff_ci_high"])
        for r in board:
            ci = r.get(f"{metric}_ci", [float("nan")] * 2)
            dci = r.get("diff_ci", [float("nan")] * 2)
            w.writerow([r[c] for c in cols] + [ci[0], ci[1], r.get("diff", float("nan")), dci[0], dci[1]])
    lines = [f"# Ablation leaderboard ({meta['seeds']} seed(s), {meta['n_val_test']} val_test images)", "",
             f"Sorted by {metric}. Metrics are fractions (not x1000), mean over seeds. CI: 95% percentile "
             f"bootstrap over val_test rows of the seed-averaged probabilities. Δ: paired bootstrap difference "
             f"in {metric} against `{baseline}` (same resampled rows); * marks a CI that excludes 0.", "",
             "| arm | " + " | ".join(TABLE_METRICS) + f" | {metric} 95% CI | Δ{metric} vs baseline |",
             "|" + "---|" * (len(TABLE_METRICS) + 3)]
    for r in board:
        ci = r.get(f"{metric}_ci", [float("nan")] * 2)
        d, dci = r.get("diff", float("nan")), r.get("diff_ci", [float("nan")] * 2)
        star = "*" if np.isfinite(dci[0]) and (dci[0] > 0 or dci[1] < 0) else ""
        cells = " | ".join(f"{r[m]:.4f}" for m in TABLE_METRICS)
        lines.append(f"| {r['arm']} | {cells} | [{ci[0]:.4f}, {ci[1]:.4f}] | {d:+.4f} [{dci[0]:+.4f}, {dci[1]:+.4f}]{star} |")
    lines += ["", f"cache `{meta['cache']}` ({meta['fingerprint'][:16]}), splits {meta['split_digest'][:12]}, "
                  f"{meta['seconds']:.1f} s"]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    (out / "leaderboard.json").write_text(json.dumps({"meta": meta, "rows": board}, indent=2, default=float))


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="arm", desc="ablate", disable=not enabled or not sys.stderr.isatty())
