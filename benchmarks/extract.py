"""Extraction throughput: the natix pipeline against a naive loop, same images, same backbone.

The naive loop is what a first script does: one image per forward, views cropped and resized
with PIL, fp32, features kept in memory. The natix pipeline is `natix.extract.extract` end to
end into a fresh cache (hashing, decoding in workers, batched views, batched forward,
crash-safe writes, the final merge). Both run in this process on the same files.

    python benchmarks/extract.py                       # CPU: tiny random DINOv3, 48 demo images
    python benchmarks/extract.py --arch large --images 1024 --frames 1080p --batch-size 64 \
        --workers 15 --compile                          # one GPU: ViT-L/16, 1080p JPEGs

Weights are random (same FLOPs as the real ones); the GPU rows add achieved TFLOP/s and MFU
against a bf16 matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARCHS = {  # hidden, layers, heads, mlp
    "tiny": (32, 2, 2, 64),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge_plus": (1280, 32, 20, 5120),
}


def make_backbone(arch: str, out: Path) -> Path:
    """Save a randomly initialised DINOv3 ViT of the given size."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    hidden, layers, heads, mlp = ARCHS[arch]
    cfg = DINOv3ViTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=mlp, num_register_tokens=4, use_gated_mlp=arch == "huge_plus")
    torch.manual_seed(0)
    DINOv3ViTModel(cfg).save_pretrained(out)
    return out


def make_images(out: Path, n: int, frames: str) -> Path:
    """Demo scenes (mixed 224² and 720p), or the same scenes resized to 1080p JPEGs."""
    from PIL import Image

    from natix.data.demo import make_demo_images

    make_demo_images(out, n=n, seed=0, square_fraction=0.5 if frames == "mixed" else 0.0)
    if frames == "1080p":
        for p in sorted(out.glob("*.jpg")):
            Image.open(p).resize((1920, 1080), Image.BILINEAR).save(p, quality=90)
    return out


def view_flops(hidden: int, layers: int, mlp: int, side: int, *, gated: bool = False, n_prefix: int = 5) -> float:
    """Forward FLOPs (2·MAC) of one square view: patch embedding, projections, MLP, attention."""
    patches = (side // 16) ** 2
    tokens = patches + n_prefix
    mlp_macs = (3 if gated else 2) * hidden * mlp
    per_layer = tokens * (4 * hidden * hidden + mlp_macs) + 2 * tokens * tokens * hidden
    return 2.0 * (layers * per_layer + patches * 3 * 16 * 16 * hidden)


def image_flops(arch: str, recipe) -> float:
    """Forward FLOPs of one image of `recipe` through the `arch` backbone: the sum over its views."""
    from natix.extract.views import view_table

    hidden, layers, _, mlp = ARCHS[arch]
    return sum(view_flops(hidden, layers, mlp, v.size, gated=arch == "huge_plus") for v in view_table(recipe))


def matmul_peak_tflops(device, dtype=None) -> float:
    """Best square matmul throughput over a few sizes (the MFU denominator): bf16 unless `dtype`
    says otherwise; smaller sizes and fewer repeats on CPU, where it only labels a smoke run."""
    import torch

    dtype = torch.bfloat16 if dtype is None else dtype
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    best = 0.0
    for n in (4096, 8192) if cuda else (512, 1024):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync()
        reps = 20 if cuda else 3
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e12)
    return best


def pil_crops(path, table):
    """The naive way to cut views: PIL decode, then a PIL crop + resize per view, as uint8 ``[V, 3, S, S]``."""
    import torch
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    views = []
    for v in table:
        box = (v.box[0] * w, v.box[1] * h, v.box[2] * w, v.box[3] * h)
        crop = im.resize((v.size, v.size), Image.BILINEAR, box=box)
        if v.flip:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        views.append(torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1))
    return torch.stack(views)


def pil_views(path, table, mean, std):
    """The naive views of `pil_crops` as a normalised float tensor ``[V, 3, S, S]``."""
    return (pil_crops(path, table).float() / 255 - mean) / std


def naive_loop(paths: list[Path], backbone_dir: Path, recipe, device) -> tuple[float, np.ndarray]:
    """One image per forward, PIL crops and resizes, fp32. Returns (seconds, features)."""
    import torch
    from transformers import DINOv3ViTModel

    from natix.extract.views import view_table

    model = DINOv3ViTModel.from_pretrained(backbone_dir).eval().to(device)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    table = view_table(recipe)
    feats = []
    t = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            out = model(pixel_values=pil_views(p, table, mean, std).to(device)).pooler_output
            feats.append(out.float().cpu().numpy())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, np.stack(feats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--frames", choices=["mixed", "720p", "1080p"], default="mixed")
    ap.add_argument("--views", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--naive-images", type=int, default=None,
                    help="images for the naive loop (default: all; fewer on slow GPUs runs)")
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging

    from natix.cache.store import open_cache
    from natix.config import RunOptions, ViewRecipe
    from natix.extract.extractor import extract
    from natix.extract.featurizer import resolve_device

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    device = resolve_device(args.device)
    recipe = ViewRecipe(n_views=args.views)
    work = Path(tempfile.mkdtemp(prefix="natix-bench-"))
    try:
        backbone = make_backbone(args.arch, work / "backbone")
        images = make_images(work / "images", args.images, args.frames)
        paths = sorted(images.glob("*.jpg"))
        n_naive = args.naive_images or len(paths)

        naive_s, naive_feats = naive_loop(paths[:n_naive], backbone, recipe, device)
        r = extract(images, str(backbone), recipe=recipe, cache_root=work / "cache", precision="auto",
                    options=RunOptions(batch_size=args.batch_size, workers=args.workers, device=str(device),
                                       progress=False), compile=args.compile)
        assert r.extracted == len(paths), r
        with open_cache(r.cache_file) as c:  # same features as the naive loop, up to dtype
            by_path = {Path(p).name: i for i, p in enumerate(c.paths)}
            ours = c.features(np.array([by_path[p.name] for p in paths[:n_naive]]))
        err = float(np.abs(ours - naive_feats).max() / (np.abs(naive_feats).max() + 1e-12))

        flops = image_flops(args.arch, recipe)
        rows = [("naive loop (PIL views, 1 image/forward, fp32)", n_naive / naive_s),
                (f"natix extract (end to end, {r.precision}, batch {r.batch_size}, {args.workers} workers)",
                 r.images_per_s)]
        peak = matmul_peak_tflops(device) if device.type == "cuda" else None
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"\nextraction benchmark: {args.images} images ({args.frames}), {args.views} views, "
              f"DINOv3 {args.arch} (random weights, {flops / args.views / 1e9:.2f} GFLOP/view), {name}")
        head = f"{'pipeline':<62} {'images/s':>9} {'views/s':>9} {'ratio':>6}"
        if peak:
            head += f" {'TFLOP/s':>8} {'MFU':>6}"
        print(head)
        print("-" * len(head))
        for label, ips in rows:
            line = f"{label:<62} {ips:>9.1f} {ips * args.views:>9.0f} {ips / rows[0][1]:>5.2f}x"
            if peak:
                tf = ips * flops / 1e12
                line += f" {tf:>8.1f} {tf / peak:>6.1%}"
            print(line)
        if peak:
            print(f"bf16 matmul peak measured here: {peak:.0f} TFLOP/s")
        print(f"max |natix - naive| / max|naive| = {err:.3g} (float16 storage, uint8 antialiased views vs PIL)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
