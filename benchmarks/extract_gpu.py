"""The whole CUDA extraction path in one process: exercised, checked against the CPU, and timed.

One invocation builds its inputs, runs `natix.extract.extract` end to end with everything the
CUDA path has (decoding in DataLoader workers, pinned host memory, views cut on the GPU by the
featurizer, bf16 autocast, ``torch.compile``, the background part writer, the out-of-memory
back-off), checks the features, times natix against two alternatives and the backbone alone,
and prints one markdown table (and writes the same numbers as JSON with ``--json-out``)::

    python benchmarks/extract_gpu.py --json-out extract_gpu.json          # one GPU: ViT-L/16, defaults below
    python benchmarks/extract_gpu.py --device cpu --arch tiny --images 8  # smoke run of every step (~20 s)

Rows (each states how many images it used):

- **natix**: `extract()` into a fresh cache, end to end (content hashing, decoding in workers,
  views, forward, part writes, the final merge), ``--images`` files, after a warm-up extraction
  of ``2 x --batch-size`` files into another cache (it pays for ``torch.compile``). A run of a
  quarter of the files is timed too; the marginal rate between the two is the steady state.
- **naive**: benchmarks/extract.py's loop: one image (its 10 views) per forward, PIL views, fp32
  (``--naive-images``, 128 by default: it is slow).
- **DataLoader + PIL + bf16**: a torch DataLoader with the same workers decoding with PIL and
  cutting the same views with PIL (uint8), pinned, batched, normalised on the device, an eager
  bf16-autocast forward, features to host (``--baseline-images``, 1024 by default).
- **backbone alone**: the featurizer's forward (compiled as natix's) on views already on the
  device, no decoding and no host copy: the ceiling.

TFLOP/s count the backbone analytically (patch embedding, QKV and output projections, the two
attention matmuls and the MLP over 196 patches + CLS + 4 registers per 224² view); MFU divides
them by a bf16 matmul peak measured in the same run (on CPU: a matmul peak of the run's precision).

Checks (a failed check makes the exit status 1, after the table and the JSON):

- **path**: during the warm-up, where the featurizer cut the views (on CUDA: on the GPU; on CPU:
  in the DataLoader workers) and how natix's DataLoader was set up (the asked-for workers; pinned
  memory on CUDA).
- **CPU vs device**: ``--check-images`` (4) distinct images extracted on the CPU in fp32 with
  workers 0 against the same images' rows of the natix cache: min cosine over views must be
  >= 0.99 (bf16 autocast and the GPU's float resampler against the CPU's uint8 one).
- **out-of-memory back-off**: an extraction of ``2 x --batch-size`` files (compile off: a halved
  batch would recompile) whose first forward runs out of memory, on CUDA a real allocator error
  (it asks for 256 TiB), on CPU a raised ``torch.cuda.OutOfMemoryError`` as the project's tests
  do; it must log the back-off, settle at half the batch and give the same features as the natix
  run (min cosine >= 0.999).

Weights are random (the real ones cost the same FLOPs). On CUDA the defaults (ViT-L/16, 4096
1080p JPEGs, batch 64, up to 15 workers) are sized for well under 8 minutes, most of it the first
``torch.compile`` (an estimate: no GPU has run this yet). Progress lines carry timestamps. The
JPEGs are 64 demo scenes resized to 1920x1080, each file with its own JPEG comment so that every
file is its own cache row. Targets (the extraction issue's, for one H200, ViT-L/16, 10 views of
224², 1080p JPEGs): natix >= 300 images/s end to end and >= 1.6x the DataLoader + PIL + bf16 row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import logging.handlers
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from extract import ARCHS, image_flops, make_backbone, make_images, matmul_peak_tflops, naive_loop, pil_crops

TARGET_IMAGES_PER_S = 300.0
TARGET_VS_BASELINE = 1.6
MIN_COSINE_VS_CPU = 0.99  # bf16 + GPU resampler against fp32 + CPU resampler
MIN_COSINE_BACKOFF = 0.999  # the same images, precision and resampler; only the batch (and compile) differ
OOM_LOADER = "bench-oom-once"
ROWS = ("natix", "naive", "dataloader_pil_bf16", "backbone_alone")


class Clock:
    """Timestamped progress lines on stdout (flushed: a remote run's log shows where it is)."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - self.t0:6.1f}s] {message}", flush=True)


class Report:
    """Everything measured so far; rewritten to ``--json-out`` after every step, so a run that
    dies or is killed still returns what it measured."""

    def __init__(self, path: Path | None, config: dict):
        self.path, self.data = path, {"status": "running", "config": config}

    def update(self, **fields) -> None:
        self.data.update(fields)
        if self.path is not None:
            from natix.jsonio import write_json

            write_json(self.path, self.data)


class OneOutOfMemory:
    """Makes the first forward of a backbone loaded as ``bench-oom-once:DIR`` run out of memory."""

    def __init__(self):
        self.armed, self.raised = True, 0

    def register(self) -> None:
        """Register the loader (once per process): the transformers loader whose first forward
        fails; on CUDA the allocator itself raises, elsewhere the error is raised."""
        import torch

        from natix.extract.backbones import LOADERS, register_loader

        @register_loader(OOM_LOADER)
        def load_oom_once(name: str, *, checkpoint: str | None):
            base = LOADERS.get("transformers")(name, checkpoint=checkpoint)

            def tokens(model, pixels):
                if self.armed:
                    self.armed, self.raised = False, self.raised + 1
                    if pixels.device.type == "cuda":
                        torch.empty(1 << 48, dtype=torch.uint8, device=pixels.device)  # 256 TiB: a real OOM
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (raised by the benchmark)")
                return base.tokens(model, pixels)

            return dataclasses.replace(base, tokens=tokens)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda[:N] (the point of this script) or cpu (smoke run)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="large", help="random DINOv3 size (large = ViT-L/16)")
    ap.add_argument("--images", type=int, default=4096, help="1080p JPEG files natix extracts")
    ap.add_argument("--scenes", type=int, default=64, help="distinct demo scenes behind the files")
    ap.add_argument("--naive-images", type=int, default=128, help="images of the naive loop (at most --images)")
    ap.add_argument("--baseline-images", type=int, default=1024, help="images of the DataLoader + PIL + bf16 row")
    ap.add_argument("--check-images", type=int, default=4, help="images extracted on the CPU for the check")
    ap.add_argument("--batch-size", type=int, default=64, help="images per forward (10 views each)")
    ap.add_argument("--workers", type=int, default=max(1, min(15, (os.cpu_count() or 2) - 1)))
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the backbone (default: on for CUDA, off for CPU)")
    ap.add_argument("--ceiling-seconds", type=float, help="backbone-alone timing (default: 5 on CUDA, 1 on CPU)")
    ap.add_argument("--json-out", type=Path, default=None, help="also write every number here as JSON")
    ap.add_argument("--work", type=Path, help="where the run's temporary folder goes (removed at the end)")
    args = ap.parse_args(argv)
    for name, least in (("images", 2), ("batch_size", 2), ("scenes", 1), ("naive_images", 1), ("baseline_images", 1),
                        ("check_images", 1)):  # 2: the back-off check halves a batch
        if getattr(args, name) < least:
            ap.error(f"--{name.replace('_', '-')} must be >= {least}")
    if args.check_images > min(args.scenes, args.images):
        ap.error("--check-images must be <= --scenes and <= --images (the check wants distinct images)")
    for name in ("naive_images", "baseline_images", "scenes"):
        setattr(args, name, min(getattr(args, name), args.images))
    return args


def preflight(args, clock: Clock):
    """Refuse, before any work, what would fail later: no GPU, no compiler, no disk. Returns the
    device and whether to compile."""
    import torch
    import transformers

    from natix.errors import NatixError
    from natix.extract.featurizer import resolve_device

    try:
        device = resolve_device(args.device)
    except NatixError as exc:
        raise SystemExit(f"error: {exc}") from None
    compile = device.type == "cuda" if args.compile is None else args.compile
    if args.ceiling_seconds is None:
        args.ceiling_seconds = 5.0 if device.type == "cuda" else 1.0
    if compile and args.images % args.batch_size:
        clock.say(f"warning: --images {args.images} is not a multiple of --batch-size {args.batch_size}: the last, "
                  "smaller batch makes torch.compile compile again inside the timed run")
    if compile and device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise SystemExit("error: torch.compile on CUDA needs triton, which is not installed: install it or pass "
                         "--no-compile")
    if compile and device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        raise SystemExit("error: torch.compile on CPU needs a C++ compiler: install one or pass --no-compile")
    work = args.work or Path(tempfile.gettempdir())
    work.mkdir(parents=True, exist_ok=True)
    need = args.images * 0.5e6 + 4e9  # ~330 KB per 1080p JPEG, the backbone, the caches
    if shutil.disk_usage(work).free < need:
        raise SystemExit(f"error: {work} has {shutil.disk_usage(work).free / 1e9:.1f} GB free, the run needs "
                         f"{need / 1e9:.1f} GB: pass --work on a larger disk or fewer --images")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cuda": torch.version.cuda, "gpu": gpu, "cpu_count": os.cpu_count(), "device": str(device),
           "compile": compile}
    clock.say("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    return device, compile, env


def make_frames(work: Path, n: int, scenes: int) -> list[Path]:
    """`n` 1080p JPEG files from `scenes` demo scenes: file i is scene ``i % scenes`` with a JPEG
    comment of its own, so every file has its own bytes (its own cache row) and the scene's pixels."""
    make_images(work / "scenes", scenes, "1080p")
    blobs = [p.read_bytes() for p in sorted((work / "scenes").glob("*.jpg"))]
    out = work / "frames"
    out.mkdir()
    paths = []
    for i in range(n):
        data, comment = blobs[i % len(blobs)], f"natix benchmark frame {i}".encode()
        path = out / f"frame_{i:06d}.jpg"
        path.write_bytes(data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + data[2:])
        paths.append(path)
    return paths


def subset(paths: list[Path], folder: Path) -> Path:
    """A folder holding hard links to `paths` (same bytes, so the same image ids)."""
    folder.mkdir(parents=True)
    for p in paths:
        os.link(p, folder / p.name)
    return folder


def natix_run(source: Path, backbone: str, cache: Path, args, device, *, precision: str, compile: bool,
              workers: int, images: int):
    """`extract()` of `source` into the fresh cache root `cache`, checked to have extracted every image."""
    from natix.config import RunOptions, ViewRecipe
    from natix.extract.extractor import extract

    r = extract(source, backbone, recipe=ViewRecipe(), cache_root=cache, precision=precision, compile=compile,
                options=RunOptions(batch_size=args.batch_size, workers=workers, device=str(device), progress=False))
    if r.extracted != images or r.failed:
        raise RuntimeError(f"extract of {source} extracted {r.extracted} of {images} images ({r.failed} failed)")
    return r


@contextlib.contextmanager
def observed_path():
    """During one extract call: where the featurizer cut views and how the DataLoader was set up."""
    from torch.utils.data import DataLoader

    import natix.extract.featurizer as featurizer_module

    seen = {"views_cut_on": set(), "loaders": []}
    build, iterate = featurizer_module.build_views, DataLoader.__iter__

    def build_spy(images, recipe):
        seen["views_cut_on"].update(im.device.type for im in images)
        return build(images, recipe)

    def iter_spy(loader):
        seen["loaders"].append({"workers": loader.num_workers, "pin_memory": loader.pin_memory})
        return iterate(loader)

    featurizer_module.build_views, DataLoader.__iter__ = build_spy, iter_spy
    try:
        yield seen
    finally:
        featurizer_module.build_views, DataLoader.__iter__ = build, iterate


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backbone_alone(backbone_dir: Path, args, device, precision: str, compile: bool) -> dict:
    """The featurizer's forward on random uint8 views already on the device: images/s of the model step."""
    import torch

    from natix.config import Preprocess, ViewRecipe
    from natix.extract.backbones import load_backbone
    from natix.extract.featurizer import Featurizer
    from natix.extract.views import view_table

    recipe, batch = ViewRecipe(), min(args.batch_size, args.images)  # natix's forwards are this size
    model, _ = load_backbone(str(backbone_dir))
    f = Featurizer(model, recipe, Preprocess(), device=device, precision=precision, batch_size=batch,
                   compile=compile)
    g = torch.Generator().manual_seed(0)
    views = {s: torch.randint(0, 256, (batch, sum(v.size == s for v in view_table(recipe)), 3, s, s),
                              dtype=torch.uint8, generator=g).to(device) for s in f.sizes}
    t = time.perf_counter()
    f.forward(views)  # compiles
    sync(device)
    first = time.perf_counter() - t
    f.forward(views)
    sync(device)
    iters, t = 0, time.perf_counter()
    while iters < 3 or time.perf_counter() - t < args.ceiling_seconds:
        f.forward(views)
        sync(device)
        iters += 1
    return {"images": batch * iters, "seconds": time.perf_counter() - t, "first_forward_s": first}


def pil_batch(paths: list[Path], table):
    """The baseline's collate step (in the workers): the files' views cut with PIL, uint8 ``[B, V, 3, S, S]``."""
    import torch

    return torch.stack([pil_crops(p, table) for p in paths])


def dataloader_baseline(paths: list[Path], backbone_dir: Path, device, batch_size: int, workers: int):
    """DataLoader workers decode and cut views with PIL; batches are pinned, normalised on the
    device and run through the eager model under bf16 autocast; features go to the host.
    Returns (seconds, features ``[N, V, D]``), timed from the loader's start to the last features."""
    import functools

    import torch
    from torch.utils.data import DataLoader
    from transformers import DINOv3ViTModel

    from natix.config import Preprocess, ViewRecipe
    from natix.extract.views import normalize, view_table

    model = DINOv3ViTModel.from_pretrained(backbone_dir).eval().to(device)
    pre = Preprocess()
    loader = DataLoader(paths, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                        collate_fn=functools.partial(pil_batch, table=view_table(ViewRecipe())),
                        prefetch_factor=4 if workers else None)
    feats = []
    t = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        for views in loader:
            b, v = views.shape[:2]
            x = normalize(views.to(device, non_blocking=True).flatten(0, 1), pre.mean, pre.std)
            feats.append(model(pixel_values=x).pooler_output.float().reshape(b, v, -1).cpu())
    sync(device)
    return time.perf_counter() - t, torch.cat(feats).numpy()


def cache_rows(cache_file: Path, ids=None) -> tuple[list[str], np.ndarray]:
    """The ids and float32 features ``[n, V, D]`` of a natix cache's rows `ids` (default: all), in that order."""
    from natix.cache.store import open_cache

    with open_cache(cache_file) as c:
        ids = list(c.ids) if ids is None else list(ids)
        pos = {i: k for k, i in enumerate(c.ids)}
        idx = np.array([pos[i] for i in ids])
        order = np.argsort(idx)  # sorted rows read fastest
        out = np.empty((len(idx), c.n_views, c.dim), dtype=np.float32)
        out[order] = c.features(idx[order])
        return ids, out


def agreement(reference: np.ndarray, got: np.ndarray) -> dict:
    """How close two ``[n, V, D]`` feature sets are, per view row: cosines, max abs diff, and the
    cosine after removing the reference's mean row (blind to a direction every image shares)."""
    a = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    b = got.reshape(-1, got.shape[-1]).astype(np.float64)

    def cosines(x, y):
        return (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-30)

    cos = cosines(a, b)
    centred = cosines(a - a.mean(0), b - a.mean(0)) if len(reference) > 1 else np.array([np.nan])
    return {"view_rows": len(a), "max_abs_diff": float(np.abs(a - b).max()), "max_abs_reference": float(np.abs(a).max()),
            "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "min_centred_cosine": float(centred.min())}


def result_fields(r) -> dict:
    return {**dataclasses.asdict(r), "images_per_s": r.images_per_s}


def time_natix(paths: list[Path], backbone: Path, work: Path, args, device, compile: bool, clock: Clock) -> dict:
    """natix end to end: a warm-up (observed: where views are cut, the DataLoader's set-up), a
    quarter of the files, then all of them, each into a fresh cache."""
    run = dict(args=args, device=device, precision=args.precision, compile=compile, workers=args.workers)
    # Whole batches where the files allow: a smaller last batch would recompile a compiled backbone.
    warm_n = min(len(paths), 2 * args.batch_size)
    quarter_n = (len(paths) // 4) // args.batch_size * args.batch_size or max(1, len(paths) // 4)
    clock.say(f"natix warm-up: {warm_n} images (compile={compile}; observing the path)")
    with observed_path() as seen:
        warm = natix_run(subset(paths[:warm_n], work / "warm"), str(backbone), work / "cache-warm", images=warm_n,
                         **run)
    clock.say(f"natix warm-up done in {warm.seconds:.1f} s; timing {quarter_n} images")
    quarter = natix_run(subset(paths[:quarter_n], work / "quarter"), str(backbone), work / "cache-quarter",
                        images=quarter_n, **run)
    clock.say(f"natix {quarter_n} images: {quarter.images_per_s:.1f} images/s; timing all {len(paths)}")
    full = natix_run(work / "frames", str(backbone), work / "cache", images=len(paths), **run)
    clock.say(f"natix {len(paths)} images: {full.images_per_s:.1f} images/s end to end")
    extra = len(paths) - quarter_n
    marginal = extra / (full.seconds - quarter.seconds) if extra > 0 and full.seconds > quarter.seconds else None
    path = {"views_cut_on": sorted(seen["views_cut_on"]) or ["dataloader workers"], "loaders": seen["loaders"]}
    return {"warmup": result_fields(warm), "quarter": result_fields(quarter), "full": result_fields(full),
            "marginal_images_per_s": marginal, "observed_path": path}


def rerun(paths: list[Path], name: str, backbone: str, work: Path, natix_cache: Path, args, device, *,
          precision: str, compile: bool, workers: int):
    """`paths` extracted again into a cache of their own, and that run's features' agreement with natix's."""
    r = natix_run(subset(paths, work / name), backbone, work / f"cache-{name}", args, device, precision=precision,
                  compile=compile, workers=workers, images=len(paths))
    ids, features = cache_rows(r.cache_file)
    return r, agreement(cache_rows(natix_cache, ids)[1], features)


def path_check(observed: dict, device, workers: int) -> dict:
    """The path the warm-up took is the device's: on CUDA views cut on the GPU and pinned batches;
    on CPU views cut in the workers; the asked-for number of workers either way."""
    loaders = observed["loaders"]
    cuda = device.type == "cuda"
    passed = (len(loaders) == 1 and loaders[0]["workers"] == workers and loaders[0]["pin_memory"] == cuda
              and observed["views_cut_on"] == (["cuda"] if cuda else ["dataloader workers"]))
    return {**observed, "passed": passed}


def cpu_check(paths: list[Path], backbone: Path, work: Path, args, natix_cache: Path) -> dict:
    """The first ``--check-images`` files (distinct scenes) on the CPU in fp32 against natix's rows."""
    import torch

    n = args.check_images
    _, stats = rerun(paths[:n], "cpu", str(backbone), work, natix_cache, args, torch.device("cpu"),
                     precision="fp32", compile=False, workers=0)
    return {**stats, "images": n, "threshold_min_cosine": MIN_COSINE_VS_CPU,
            "passed": stats["min_cosine"] >= MIN_COSINE_VS_CPU}


def backoff_check(paths: list[Path], backbone: Path, work: Path, args, device, natix_cache: Path) -> dict:
    """An extraction whose first forward runs out of memory: the back-off must be logged, settle at
    half the batch, and give natix's features for the same images."""
    n = min(len(paths), 2 * args.batch_size)
    oom = OneOutOfMemory()
    oom.register()
    catch = logging.handlers.BufferingHandler(capacity=1 << 20)  # keeps every warning record
    catch.setLevel(logging.WARNING)
    logger = logging.getLogger("natix.extract.featurizer")
    logger.addHandler(catch)
    try:
        r, stats = rerun(paths[:n], "oom", f"{OOM_LOADER}:{backbone}", work, natix_cache, args, device,
                         precision=args.precision, compile=False, workers=args.workers)
    finally:
        logger.removeHandler(catch)
    expected = min(args.batch_size, n) // 2
    warnings = [record.getMessage() for record in catch.buffer]
    seen = oom.raised == 1 and len(warnings) == 1 and r.batch_size == expected
    return {**stats, "images": n, "raised": oom.raised, "warnings": warnings, "batch_size": args.batch_size,
            "settled_batch_size": r.batch_size, "expected_batch_size": expected, "seen": seen,
            "threshold_min_cosine": MIN_COSINE_BACKOFF,
            "passed": seen and stats["min_cosine"] >= MIN_COSINE_BACKOFF}


def alternatives(paths: list[Path], backbone: Path, args, device, natix_cache: Path, clock: Clock) -> dict:
    """The DataLoader + PIL + bf16 baseline and the naive loop, each with its features' agreement with natix's."""
    from natix.config import ViewRecipe
    from natix.data.sources import hash_files

    out = {}
    for key, n in (("dataloader_pil_bf16", args.baseline_images), ("naive", args.naive_images)):
        clock.say(f"{key}: {n} images")
        if key == "naive":
            seconds, feats = naive_loop(paths[:n], backbone, ViewRecipe(), device)
        else:
            seconds, feats = dataloader_baseline(paths[:n], backbone, device, args.batch_size, args.workers)
        ours = cache_rows(natix_cache, hash_files(paths[:n]))[1]
        out[key] = {"images": n, "seconds": seconds, "vs_natix": agreement(ours, feats)}
        clock.say(f"{key}: {n / seconds:.1f} images/s")
    return out


def table_rows(t: dict, flops_per_image: float, peak: float, n_views: int) -> list[dict]:
    """One row per pipeline: images/s, views/s, TFLOP/s, MFU and natix's images/s over the row's."""
    labels = {"natix": "natix extract (end to end)", "naive": "naive loop (PIL views, 1 image/forward, fp32)",
              "dataloader_pil_bf16": "DataLoader + PIL + bf16", "backbone_alone": "backbone alone (ceiling)"}
    natix_ips = t["natix"]["images"] / t["natix"]["seconds"]
    rows = []
    for key in ROWS:
        ips = t[key]["images"] / t[key]["seconds"]
        tflops = ips * flops_per_image / 1e12
        rows.append({"row": key, "label": labels[key], "images": t[key]["images"], "images_per_s": ips,
                     "views_per_s": ips * n_views, "tflops": tflops, "mfu": tflops / peak,
                     "natix_over_row": natix_ips / ips})
    return rows


def targets(rows: list[dict], device, arch: str, gpu: str | None) -> list[dict]:
    """PASS/MISS of the issue's targets, only for what was measured on CUDA with ViT-L/16."""
    by = {r["row"]: r for r in rows}
    why = ("targets apply to CUDA only" if device.type != "cuda" else
           "targets are for ViT-L/16 (--arch large)" if arch != "large" else None)
    out = []
    for target, measured, goal in (
            (f"natix >= {TARGET_IMAGES_PER_S:.0f} images/s end to end", by["natix"]["images_per_s"], TARGET_IMAGES_PER_S),
            (f"natix >= {TARGET_VS_BASELINE}x DataLoader + PIL + bf16", by["dataloader_pil_bf16"]["natix_over_row"],
             TARGET_VS_BASELINE)):
        ok = None if why else measured >= goal
        out.append({"target": target, "measured": measured, "pass": ok, "on": gpu,
                    "status": f"n/a: {why}" if why else "PASS" if ok else "MISS"})
    return out


def print_table(rows: list[dict], peak: float, marginal: float | None, goals: list[dict], header: str) -> None:
    print(f"\n{header}\n")
    print("| pipeline | images | images/s | views/s | TFLOP/s | MFU | natix ÷ row |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['label']} | {r['images']} | {r['images_per_s']:.1f} | {r['views_per_s']:.0f} | "
              f"{r['tflops']:.3g} | {r['mfu']:.1%} | {r['natix_over_row']:.2f}x |")
    print(f"\nmatmul peak measured here: {peak:.3g} TFLOP/s; natix steady state (marginal, quarter → all files): "
          + (f"{marginal:.1f} images/s" if marginal else "n/a"))
    measured = "; ".join(f"{g['target']}: {g['measured']:.2f} {g['status']}" for g in goals)
    print(goals[0]["status"].removeprefix("n/a: ") if goals[0]["pass"] is None else
          f"targets (one H200, ViT-L/16, 10 views of 224², 1080p JPEGs): {measured}")


def measure(args, device, compile: bool, env: dict, work: Path, report: Report, clock: Clock) -> None:
    """Every step, in the order that returns the most if a remote run is cut short."""
    import torch

    from natix.config import ViewRecipe

    clock.say(f"random DINOv3 {args.arch}; {args.images} 1080p JPEGs from {args.scenes} demo scenes")
    backbone = make_backbone(args.arch, work / "backbone")
    paths = make_frames(work, args.images, args.scenes)
    dtype = torch.bfloat16 if device.type == "cuda" or args.precision == "bf16" else torch.float32
    peak = matmul_peak_tflops(device, dtype)
    report.update(matmul_peak_tflops={"value": peak, "dtype": str(dtype).removeprefix("torch.")})
    clock.say(f"matmul peak {peak:.3g} TFLOP/s; backbone alone (compile={compile})")
    timed = {"backbone_alone": backbone_alone(backbone, args, device, args.precision, compile)}
    report.update(timings=timed)
    clock.say(f"backbone alone: {timed['backbone_alone']['images'] / timed['backbone_alone']['seconds']:.1f} "
              f"images/s (first forward {timed['backbone_alone']['first_forward_s']:.1f} s)")
    natix = time_natix(paths, backbone, work, args, device, compile, clock)
    timed["natix"] = natix["full"]
    report.update(natix=natix)
    natix_cache = Path(natix["full"]["cache_file"])
    timed.update(alternatives(paths, backbone, args, device, natix_cache, clock))
    report.update(timings=timed)
    clock.say("checks: the observed path, CPU fp32 vs device, the out-of-memory back-off")
    checks = {"path": path_check(natix["observed_path"], device, args.workers),
              "cpu_vs_device": cpu_check(paths, backbone, work, args, natix_cache)}
    report.update(checks=checks)
    checks["oom_backoff"] = backoff_check(paths, backbone, work, args, device, natix_cache)
    report.update(checks=checks)
    clock.say("checks: " + ", ".join(f"{name} {'passed' if c['passed'] else 'FAILED'}" + (
        f" (min cosine {c['min_cosine']:.5f})" if "min_cosine" in c else "") for name, c in checks.items()))
    per_image = image_flops(args.arch, ViewRecipe())
    rows = table_rows(timed, per_image, peak, ViewRecipe().n_views)
    goals = targets(rows, device, args.arch, env["gpu"])
    failed = [name for name, c in checks.items() if not c["passed"]]
    report.update(gflop_per_view=per_image / ViewRecipe().n_views / 1e9, rows=rows, targets=goals,
                  status="passed" if not failed else "checks failed: " + ", ".join(failed))
    where = env["gpu"] or f"CPU ({torch.get_num_threads()} threads)"
    print_table(rows, peak, natix["marginal_images_per_s"], goals,
                f"extraction on {where}: DINOv3 {args.arch} (random weights, {per_image / 10 / 1e9:.2f} GFLOP/view), "
                f"10 views of 224², 1080p JPEGs, natix {args.precision}, compile={compile}, batch {args.batch_size}, "
                f"{args.workers} workers")
    clock.say(f"done: {report.data['status']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    clock = Clock()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    report = Report(args.json_out, dict(vars(args)))
    work = None
    try:
        device, compile, env = preflight(args, clock)
        report.update(config=dict(vars(args)), environment=env)  # config: with the defaults the device chose
        work = Path(tempfile.mkdtemp(prefix="natix-gpu-bench-", dir=args.work))
        measure(args, device, compile, env, work, report, clock)
    except BaseException as exc:  # recorded in the JSON, then raised as it was
        report.update(status=f"failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if report.data["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
