"""Tier-2 speed: load + fit heads from a cache, against scikit-learn on mean-pooled features.

Builds a synthetic cache (default 20,000 images × 10 views × 1024 dims, float16) whose positive
signal lives in one or two tiles, then, in this one process, times load + fit for the linear,
MLP, max and attention heads and for scikit-learn's LogisticRegression on mean-pooled features
(the obvious alternative), and prints seconds, peak RSS, val_test AUROC and ratios. Paired
bootstrap CIs compare max and attention against mean pooling on the same val_test rows.

    python benchmarks/fit_head.py                 # the table
    python benchmarks/fit_head.py --ablation      # + a 16-arm x 3-seed `ablate` run, timed
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class PeakRSS:
    """Samples this process's resident set size (VmRSS) every few milliseconds."""

    def __init__(self, every: float = 0.005):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        self.base = self.peak = self.now()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--strength", type=float, default=3.0)
    ap.add_argument("--ablation", action="store_true", help="also time a 16-arm x 3-seed ablation")
    ap.add_argument("--jobs", type=int, default=1, help="processes for the ablation")
    args = ap.parse_args()

    import torch

    from natix import metrics as M
    from natix.cache.synthetic import make_synthetic_cache
    from natix.heads.runs import load_dataset, resolve_splits
    from natix.heads.train import HeadConfig, TrainConfig, fit, predict

    # Warm the imports both sides pay once per process (torch.optim, scikit-learn), so the
    # first timed row is not charged for them.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    work = Path(tempfile.mkdtemp(prefix="natix-fit-bench-"))
    try:
        t = time.perf_counter()
        path = make_synthetic_cache(work, n=args.n, n_views=args.views, dim=args.dim, strength=args.strength)
        build_s = time.perf_counter() - t
        f32_bytes = args.n * args.views * args.dim * 4
        rows_out, probs = [], {}

        def load():
            data = load_dataset(path)
            return data, resolve_splits(data).rows(data.ids)

        arms = [("linear", "mean"), ("mlp", "mean"), ("linear", "max"), ("linear", "attention")]
        for head, agg in arms:
            with PeakRSS() as rss:
                t = time.perf_counter()
                data, rows = load()
                model, hist = fit(data.X[rows["train"]], data.labels[rows["train"]], data.X[rows["val_select"]],
                                  data.labels[rows["val_select"]], HeadConfig(head=head, agg=agg), TrainConfig())
                secs = time.perf_counter() - t
                p = predict(model, data.X[rows["val_test"]])["prob"]
            y = data.labels[rows["val_test"]]
            probs[f"{head}/{agg}"] = p
            rows_out.append((f"natix {head} head, {agg} aggregator ({hist['epochs']} epochs)", secs,
                             rss.peak - rss.base, M.auroc(y, p)))
            del data, model

        sk = []
        for scaled in (False, True):
            with PeakRSS() as rss:
                t = time.perf_counter()
                data, rows = load()
                pooled = data.X.mean(axis=1, dtype=np.float32)
                tr, te = pooled[rows["train"]], pooled[rows["val_test"]]
                if scaled:
                    scaler = StandardScaler().fit(tr)
                    tr, te = scaler.transform(tr), scaler.transform(te)
                lr = LogisticRegression(max_iter=1000).fit(tr, data.labels[rows["train"]])
                secs = time.perf_counter() - t
                p = lr.predict_proba(te)[:, 1]
            label = "scikit-learn " + ("StandardScaler + " if scaled else "") + "LogisticRegression, mean-pooled"
            rows_out.append((label, secs, rss.peak - rss.base, M.auroc(data.labels[rows["val_test"]], p)))
            sk.append(rows_out[-1])
        sk_s, sk_auc = sk[0][1], sk[0][3]

        print(f"\ntier-2 fit benchmark: synthetic cache {args.n} x {args.views} x {args.dim} float16 "
              f"(float32 size {f32_bytes / 2**30:.2f} GiB; built in {build_s:.0f} s), "
              f"{torch.get_num_threads()} torch threads")
        head_line = f"{'load + fit':<58} {'seconds':>8} {'vs sklearn':>10} {'peak RSS':>9} {'xF32':>5} {'AUROC':>7}"
        print(head_line)
        print("-" * len(head_line))
        for label, secs, peak, auc in rows_out:
            print(f"{label:<58} {secs:>8.1f} {secs / sk_s:>9.2f}x {peak / 2**30:>7.2f}Gi {peak / f32_bytes:>5.2f} "
                  f"{auc:>7.4f}")
        print(f"ratios are against the first scikit-learn row (its defaults on the raw pooled features); "
              f"the scaled variant took {sk[1][1]:.1f} s")
        print(f"linear head vs sklearn: AUROC difference {rows_out[0][3] - sk_auc:+.4f} (raw), "
              f"{rows_out[0][3] - sk[1][3]:+.4f} (scaled)")
        y = data.labels[rows["val_test"]]
        for arm in ("linear/max", "linear/attention"):
            d, lo, hi = M.paired_bootstrap_diff(M.auroc, y, probs[arm], probs["linear/mean"], n_boot=2000)
            verdict = "excludes 0" if lo > 0 or hi < 0 else "includes 0"
            print(f"AUROC {arm} - linear/mean = {d:+.4f}  95% paired bootstrap CI [{lo:+.4f}, {hi:+.4f}] ({verdict})")
        print("peak RSS is measured above the process's RSS before each row; xF32 = peak / float32 size of the "
              "features")

        if args.ablation:
            from natix.heads.ablate import ablate

            t = time.perf_counter()
            board = ablate(path, work / "ablate", heads=("linear", "mlp"), aggs=("global", "mean", "max", "attention"),
                           policies=("softmax", "gate"), seeds=3, metric="auroc", jobs=args.jobs, progress=False,
                           data=data)
            secs = time.perf_counter() - t
            print(f"\nablation: {len(board)} arms x 3 seeds in {secs / 60:.1f} min ({args.jobs} job(s)); "
                  f"best {board[0]['arm']} AUROC {board[0]['auroc']:.4f}")
            print((work / "ablate" / "leaderboard.md").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
