"""Tier-2 speed and memory: natix against scikit-learn and minimal torch references, one process.

For each cache size (synthetic, N images × 10 views × 1024 dims, float16, the positive signal
in one or two tiles) it times, on the same splits and features:

- the linear probe on mean-pooled views: the whole `natix fit-head` process against the whole
  obvious scikit-learn script (load, mean-pool, LogisticRegression), each a fresh process; and
  the same two in this process (natix: `fit_run`, which also predicts every split and writes
  the run directory; scikit-learn: load + pool + fit + predict val_test);
- a linear head on the max over views: `fit_run` against a minimal full-batch L-BFGS of the
  same model in torch (~30 lines, fixed L2 1e-4, strong-Wolfe line search);
- (with --attention) attention pooling: `fit_run` against a minimal mini-batch AdamW loop of
  the same model (fp32, a fixed number of epochs, no early stopping);
- (with --ablation) `ablate` over 16 arms × 3 seeds.

Every row reports load + fit seconds, the ratio to its alternative, peak RSS above the
process's RSS before the row (in-process rows) or the child's peak RSS (process rows), that
peak over the float32 size of all rows' features, and val_test AUROC.

    python benchmarks/fit_head.py                                  # 20,000 images
    python benchmarks/fit_head.py --n 20000,100000 --attention --ablation --jobs 2
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SKLEARN_SCRIPT = """
import sys, time
import numpy as np
from sklearn.linear_model import LogisticRegression
from natix import metrics as M
from natix.heads.runs import load_dataset, resolve_splits
data = load_dataset(sys.argv[1])
rows = resolve_splits(data).rows(data.ids)
pooled = data.X.mean(axis=1, dtype=np.float32)
lr = LogisticRegression(max_iter=1000).fit(pooled[rows["train"]], data.labels[rows["train"]])
p = lr.predict_proba(pooled[rows["val_test"]])[:, 1]
print(M.auroc(data.labels[rows["val_test"]], p))
"""


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

    @property
    def used(self) -> int:
        return self.peak - self.base


# The child reports its own peak (VmHWM) at exit: a forked child's ru_maxrss starts at the
# parent's RSS, which would charge both sides this benchmark's memory.
PEAK_HOOK = ("import atexit, sys\n"
             "def _peak():\n"
             "    for line in open('/proc/self/status'):\n"
             "        if line.startswith('VmHWM:'): sys.stderr.write('VMHWM ' + line.split()[1] + '\\n')\n"
             "atexit.register(_peak)\n")


def run_process(code: str, argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of a fresh Python process running `code` with `argv`."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_HOOK + code, *argv], capture_output=True, text=True)
    secs = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{argv[:1]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("VMHWM ")]
    return secs, peak[-1] * 1024, proc.stdout


def load(path):
    from natix.heads.runs import load_dataset, resolve_splits

    data = load_dataset(path)
    return data, resolve_splits(data).rows(data.ids)


def lbfgs_reference(path, agg: str = "max", l2: float = 1e-4, max_iter: int = 100):
    """The minimal full-batch L-BFGS of a linear head over views, in torch."""
    import torch
    import torch.nn.functional as F

    data, rows = load(path)
    X = torch.from_numpy(data.X[rows["train"]].astype(np.float32))
    y = torch.from_numpy(data.labels[rows["train"]]).float()
    mu, sd = X.mean((0, 1)), X.std((0, 1)).clamp_min(1e-6)
    X = (X - mu) / sd
    torch.manual_seed(0)
    w = (0.01 * torch.randn(X.shape[-1])).requires_grad_()
    b = torch.zeros(1, requires_grad=True)

    def logit(Z):
        return (Z @ w).max(1).values + b if agg == "max" else (Z @ w).mean(1) + b

    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logit(X), y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        Xt = (torch.from_numpy(data.X[rows["val_test"]].astype(np.float32)) - mu) / sd
        return torch.sigmoid(logit(Xt)).numpy(), data.labels[rows["val_test"]]


def adamw_reference(path, head: str = "linear", agg: str = "attention", epochs: int = 5):
    """A minimal mini-batch AdamW loop of the same ViewModel (fp32, fixed epochs, no early stop)."""
    import torch
    import torch.nn.functional as F

    from natix.heads.config import HeadConfig

    data, rows = load(path)
    X = torch.from_numpy(data.X[rows["train"]].astype(np.float32))
    y = torch.from_numpy(data.labels[rows["train"]]).float()
    torch.manual_seed(0)
    model = HeadConfig(head=head, agg=agg).build(X.shape[-1], X.shape[1])
    model.set_standardisation(X.mean((0, 1)), X.std((0, 1)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(256):
            loss = F.binary_cross_entropy_with_logits(model(X[idx])["logit"], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(data.X[rows["val_test"]].astype(np.float32)))["logit"]).numpy()
    return p, data.labels[rows["val_test"]]


def timed(fn):
    """``fn()``'s result, its seconds and the peak RSS it added."""
    with PeakRSS() as rss:
        t = time.perf_counter()
        out = fn()
        secs = time.perf_counter() - t
    return out, secs, rss.used


def sklearn_in_process(path):
    """The obvious scikit-learn script, in this process: load, mean-pool, LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    data, rows = load(path)
    pooled = data.X.mean(axis=1, dtype=np.float32)
    lr = LogisticRegression(max_iter=1000).fit(pooled[rows["train"]], data.labels[rows["train"]])
    return lr.predict_proba(pooled[rows["val_test"]])[:, 1], data.labels[rows["val_test"]]


def natix_row(path, out, head: str, agg: str):
    from natix.heads.config import HeadConfig
    from natix.heads.runs import fit_run

    r = fit_run(path, out, head=HeadConfig(head=head, agg=agg))
    return r.metrics["val_test"]["auroc"], r.history


def bench_size(n: int, args, work: Path, table: list) -> Path:
    from natix import metrics as M
    from natix.cache.synthetic import make_synthetic_cache
    from natix.jsonio import number
    from natix.rundir import Run

    t = time.perf_counter()
    path = make_synthetic_cache(work / f"cache-{n}", n=n, n_views=10, dim=1024, strength=args.strength)
    print(f"[{n}] cache ready in {time.perf_counter() - t:.0f} s: {path}", flush=True)
    f32 = n * 10 * 1024 * 4
    load(path)  # warm the page cache for both sides

    def row(label, secs, peak, auc, ref=None, note=""):
        table.append({"n": n, "row": label, "seconds": secs, "peak": peak, "x_f32": peak / f32, "auroc": auc,
                      "ref": ref, "note": note})
        print(f"[{n}] {label}: {secs:.2f} s, {peak / 2**30:.2f} GiB, AUROC {auc:.4f} {note}", flush=True)

    for rep in range(args.repeats):
        secs, peak, _ = run_process("from natix.cli import main; main()",
                                    ["fit-head", str(path), "--out", str(work / f"run-proc-{n}"), "--force"])
        auc = number(Run(work / f"run-proc-{n}").metrics()["val_test"]["auroc"])  # null (undefined) -> NaN
        row("natix fit-head process (linear, mean)", secs, peak, auc, ref="sk-proc")
        secs, peak, outp = run_process(SKLEARN_SCRIPT, [str(path)])
        row("scikit-learn script process (load, mean, LogisticRegression)", secs, peak, float(outp), ref=None,
            note="(sk-proc)")
        table[-1]["key"] = "sk-proc"

    (auc, hist), secs, used = timed(lambda: natix_row(path, work / f"run-mean-{n}", "linear", "mean"))
    row("natix fit_run in-process (linear, mean)", secs, used, auc, ref="sk-in",
        note=f"L-BFGS {hist['iterations']} it, l2 {hist['l2']:g}")
    (p, y), secs, used = timed(lambda: sklearn_in_process(path))
    row("scikit-learn in-process (load, mean, LogisticRegression)", secs, used, M.auroc(y, p), note="(sk-in)")
    table[-1]["key"] = "sk-in"

    (auc, hist), secs, used = timed(lambda: natix_row(path, work / f"run-max-{n}", "linear", "max"))
    row("natix fit_run (linear, max)", secs, used, auc, ref="lbfgs-max",
        note=f"L-BFGS {hist['iterations']} it x {hist['members']} members, {hist['passes']} passes")
    (p, y), secs, used = timed(lambda: lbfgs_reference(path, "max"))
    row("minimal torch L-BFGS (linear, max; l2 1e-4, 100 it)", secs, used, M.auroc(y, p), note="(lbfgs-max)")
    table[-1]["key"] = "lbfgs-max"

    if args.attention:
        (auc, hist), secs, used = timed(lambda: natix_row(path, work / f"run-att-{n}", "linear", "attention"))
        row("natix fit_run (linear, attention)", secs, used, auc, ref="adamw-att",
            note=f"AdamW {hist['epochs']} epochs, {hist.get('precision')}")
        (p, y), secs, used = timed(lambda: adamw_reference(path, "linear", "attention", epochs=args.ref_epochs))
        row(f"minimal torch AdamW (linear, attention; {args.ref_epochs} epochs, fp32)", secs, used,
            M.auroc(y, p), note="(adamw-att)")
        table[-1]["key"] = "adamw-att"
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="20000", help="comma-separated cache sizes (images)")
    ap.add_argument("--strength", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=2, help="runs of the process-level rows")
    ap.add_argument("--attention", action="store_true", help="also time attention pooling against an AdamW loop")
    ap.add_argument("--ref-epochs", type=int, default=5, help="epochs of the AdamW reference")
    ap.add_argument("--ablation", action="store_true", help="also time a 16-arm x 3-seed ablation (first size)")
    ap.add_argument("--jobs", default="2", help="comma-separated --jobs values for the ablation")
    ap.add_argument("--work", default=None, help="keep caches here between runs (default: a temp dir)")
    args = ap.parse_args()

    import sklearn.linear_model  # noqa: F401
    import torch

    import natix.heads.linear  # noqa: F401  (in-process rows: both sides' imports are warm)
    from natix.heads.config import available_cores

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="natix-fit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    table: list[dict] = []
    abl = []
    try:
        sizes = [int(x) for x in args.n.split(",")]
        first = None
        for n in sizes:
            path = bench_size(n, args, work, table)
            first = first or path
        if args.ablation:
            from natix.heads.ablate import ablate
            from natix.heads.runs import load_dataset

            data = load_dataset(first)
            for jobs in (int(j) for j in args.jobs.split(",")):
                t = time.perf_counter()
                board = ablate(first, work / f"ablate-{jobs}", heads=("linear", "mlp"),
                               aggs=("global", "mean", "max", "attention"), policies=("softmax", "gate"), seeds=3,
                               metric="auroc", jobs=jobs, progress=False, data=data)
                secs = time.perf_counter() - t
                meta, best = board.meta, board.rows[0]
                abl.append((jobs, meta["threads_per_job"], secs, best["arm"], best["auroc"],
                            sum(meta["arm_seconds"].values())))
                print(f"ablation --jobs {jobs}: {secs:.1f} s", flush=True)
        print_table(table, abl, sizes, torch, available_cores())
        if args.ablation:
            print(board.markdown)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def print_table(table, abl, sizes, torch, cores) -> None:
    print(f"\ntier-2 fit benchmark: synthetic caches ({', '.join(f'{n:,}' for n in sizes)}) x 10 views x 1024 dims "
          f"float16; {cores} cores, torch {torch.__version__}")
    head = (f"| {'N':>7} | {'load + fit':<64} | {'s':>6} | {'vs alt':>7} | {'peak RSS':>8} | {'xF32':>5} "
            f"| {'AUROC':>6} |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in table:
        ref = [x for x in table if x.get("key") == r["ref"] and x["n"] == r["n"]] if r["ref"] else []
        ratio = f"{r['seconds'] / np.mean([x['seconds'] for x in ref]):.2f}x" if ref else ""
        print(f"| {r['n']:>7,} | {r['row'][:64]:<64} | {r['seconds']:>6.2f} | {ratio:>7} | {r['peak'] / 2**30:>6.2f}Gi "
              f"| {r['x_f32']:>5.2f} | {r['auroc']:>6.4f} |")
    print("vs alt: seconds over the mean of the alternative's runs (process rows against the scikit-learn process, "
          "in-process rows against their reference); xF32 = peak RSS / float32 size of all rows' features")
    for jobs, threads, secs, arm, auc, arm_sum in abl:
        print(f"ablation 16 arms x 3 seeds, --jobs {jobs} x {threads} thread(s): {secs:.1f} s "
              f"(sum of arm times {arm_sum:.1f} s); best {arm} AUROC {auc:.4f}")


if __name__ == "__main__":
    sys.exit(main())
