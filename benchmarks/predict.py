"""Serving speed: a bundle's per-image latency and batched throughput, against a naive loop.

Builds everything in a temporary directory (demo images, a tiny random DINOv3, a cache, an
attention-MIL run calibrated with Platt scaling, the exported bundle), loads the bundle and
measures, in this one process on the same images:

- latency: one image per `roadwork_probability` call (what a validator request looks like), p50/p95;
- throughput: `roadwork_probability` over all images with batch sizes 1, 8 and 32 (paths, and encoded
  bytes already in memory);
- the naive alternative: PIL decode, PIL crops and resizes, one fp32 forward per image, the same
  head and calibration.

    python benchmarks/predict.py                          # CPU, 64 mixed demo images, tiny DINOv3
    python benchmarks/predict.py --arch base --images 64  # a ViT-B/16-sized random backbone
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _extract_bench():
    """The extraction benchmark's backbone sizes and builder (one home for both scripts)."""
    spec = importlib.util.spec_from_file_location("natix_bench_extract", Path(__file__).with_name("extract.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EXTRACT = _extract_bench()
ARCHS, make_backbone = _EXTRACT.ARCHS, _EXTRACT.make_backbone


def naive_predictor(bundle, backbone_dir: Path):
    """One image per forward with PIL views in fp32, then the bundle's own head and calibration."""
    import torch
    from extract import pil_views  # benchmarks/extract.py: the same naive view building
    from transformers import DINOv3ViTModel

    from natix.extract.views import view_table

    stage = bundle.stages[0]
    device = bundle.device
    model = DINOv3ViTModel.from_pretrained(backbone_dir).eval().to(device)
    preprocess = stage.featurizer.preprocess
    mean = torch.tensor(preprocess.mean).view(3, 1, 1)
    std = torch.tensor(preprocess.std).view(3, 1, 1)
    table = view_table(stage.featurizer.recipe)

    @torch.inference_mode()
    def predict(path) -> float:
        feats = model(pixel_values=pil_views(path, table, mean, std).to(device)).pooler_output
        logit = stage.head(feats.unsqueeze(0))["logit"]
        p = torch.sigmoid(logit.double()).cpu().numpy()
        return float(stage.calibrate(p)[0]) if stage.calibrate is not None else float(p[0])

    return predict


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--calls", type=int, default=None, help="single-image calls for latency (default: --images)")
    ap.add_argument("--repeats", type=int, default=2, help="throughput: best of this many passes")
    ap.add_argument("--device", default="cpu", help="extraction and serving device (cpu, cuda, auto)")
    args = ap.parse_args()

    import torch
    from PIL import Image
    from transformers.utils import logging as hf_logging

    from natix.calibrate.apply import calibrate_run
    from natix.config import RunOptions
    from natix.data.demo import make_demo_images
    from natix.extract.extractor import extract
    from natix.heads.runs import fit_run
    from natix.heads.train import HeadConfig, TrainConfig
    from natix.serve import export_bundle, load_bundle

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    work = Path(tempfile.mkdtemp(prefix="natix-predict-bench-"))
    try:
        backbone = make_backbone(args.arch, work / "backbone")
        make_demo_images(work / "images", n=args.images, seed=0)
        paths = sorted((work / "images").glob("*.jpg"))
        res = extract(work / "images", str(backbone), cache_root=work / "cache",
                      options=RunOptions(batch_size=16, workers=0, device=args.device, progress=False))
        fit_run(res.cache_file, work / "run", head=HeadConfig(agg="attention"), train=TrainConfig(max_epochs=20))
        calibrate_run(work / "run", method="platt")
        bundle = load_bundle(export_bundle(work / "run", work / "bundle"), device=args.device, progress=False)
        naive = naive_predictor(bundle, backbone)
        raw = [p.read_bytes() for p in paths]

        bundle.roadwork_probability(paths[:2], progress=False)  # warm both pipelines (allocator, kernels)
        naive(paths[0])

        calls = [paths[i % len(paths)] for i in range(args.calls or len(paths))]
        lat = {"bundle": [], "naive": []}
        for p in calls:  # interleaved, so drift on a shared machine hits both alike
            t = time.perf_counter()
            bundle.roadwork_probability([p], progress=False)
            lat["bundle"].append(time.perf_counter() - t)
            t = time.perf_counter()
            naive(p)
            lat["naive"].append(time.perf_counter() - t)

        def throughput(fn) -> float:
            best = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            return len(paths) / best

        rows = [("naive loop (PIL views, 1 image/forward, fp32)", throughput(lambda: [naive(p) for p in paths]))]
        for b in (1, 8, 32):
            rows.append((f"bundle.roadwork_probability(paths, batch_size={b})",
                         throughput(lambda b=b: bundle.roadwork_probability(paths, batch_size=b, progress=False))))
        rows.append(("bundle.roadwork_probability(bytes, batch_size=32)",
                     throughput(lambda: bundle.roadwork_probability(raw, batch_size=32, progress=False))))

        ours = bundle.roadwork_probability(paths, progress=False)
        theirs = np.array([naive(p) for p in paths])
        sizes = sorted({f"{w}x{h}" for w, h in (Image.open(p).size for p in paths)})
        n_views = bundle.manifest["stages"][0]["recipe"]["n_views"]
        where = (torch.cuda.get_device_name(bundle.device) if bundle.device.type == "cuda"
                 else f"CPU ({torch.get_num_threads()} threads)")
        precision = bundle.manifest["stages"][0]["precision"]
        print(f"\nserving benchmark: {len(paths)} demo JPEGs ({', '.join(sizes)}), {n_views} views, DINOv3 "
              f"{args.arch} (random weights, {precision}), attention head + Platt, {where}")
        head = f"{'single-image latency (one image per call)':<50} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'ratio':>7}"
        print(head)
        print("-" * len(head))
        base = percentiles(lat["naive"])[0]
        for name, label in (("naive", "naive loop"), ("bundle", "bundle.roadwork_probability([image])")):
            p50, p95, mean = percentiles(lat[name])
            print(f"{label:<50} {p50:>8.1f} {p95:>8.1f} {mean:>8.1f} {base / p50:>6.2f}x")
        print()
        head = f"{'throughput (all images)':<50} {'images/s':>8} {'ms/image':>8} {'ratio':>7}"
        print(head)
        print("-" * len(head))
        for label, ips in rows:
            print(f"{label:<50} {ips:>8.1f} {1e3 / ips:>8.1f} {ips / rows[0][1]:>6.2f}x")
        print(f"\nratio = speed relative to the naive loop; max |bundle - naive| probability = "
              f"{np.abs(ours - theirs).max():.3g} (PIL resampling and no float16 rounding in the naive loop)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
