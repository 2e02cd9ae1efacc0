"""Challenge generation speed: natix's validator-e1 recipe against the obvious torchvision/PIL code.

Per draw on a decoded 1920×1080 RGB frame, both with the same drawn parameters:

- natix: ``challenge_recipe("validator-e1").draw(frame, id, k)`` (draws the parameters, rotates
  only the crop window, numpy distortions, JPEG encode + natix decode);
- plain: what a first script does: the frame to a float tensor, ``F.rotate`` on the full frame,
  ``F.resized_crop(..., antialias=True)``, the distortions with PIL/numpy (ImageEnhance colour,
  a multiply, PIL bilinear down/up, numpy noise, PIL Gaussian blur), JPEG via PIL encode/decode.

Then the same plus feature extraction of the 224 result (one global view) with a tiny random
DINOv3 through `natix.extract.Featurizer`, one image per call. Everything runs in this process
with an explicit thread count.

    python benchmarks/challenges.py                 # 64 draws over 4 frames
    python benchmarks/challenges.py --quick         # a few draws, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """`n` demo street scenes resized to 1920×1080, decoded."""
    from PIL import Image

    from natix.data.demo import make_demo_images

    work = Path(tempfile.mkdtemp(prefix="natix-bench-"))
    try:
        make_demo_images(work, n=n, seed=seed, square_fraction=0.0)
        return [np.asarray(Image.open(p).convert("RGB").resize((1920, 1080), Image.BILINEAR))
                for p in sorted(work.glob("*.jpg"))[:n]]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plain_challenge(frame: np.ndarray, params: dict) -> np.ndarray:
    """The same draw the plain way: full-frame float tensor ops, PIL/numpy distortions, PIL JPEG."""
    import torchvision.transforms.functional as F
    from PIL import Image, ImageEnhance, ImageFilter

    pil = Image.fromarray(frame)
    if params["level"] == 0:
        top, left, h, w = params["crop"]
        out = pil.crop((left, top, left + w, top + h)).resize((224, 224), Image.BILINEAR)
    else:
        x = F.rotate(F.to_tensor(pil), params["angle"])
        x = F.resized_crop(x, *params["crop"], [224, 224], antialias=True)
        out = F.to_pil_image(x)
        values = {"saturation": (0.4, 0.3), "brightness": (0.85, 0.725), "down_up": (2, 3), "noise": (0.001, 0.002),
                  "blur": (7, 9)}
        for name, pair in values.items():
            s = params[name]
            if not s:
                continue
            v = pair[s - 1]
            if name == "saturation":
                out = ImageEnhance.Color(out).enhance(v)
            elif name == "brightness":
                out = Image.fromarray((np.asarray(out, np.float32) * v).astype(np.uint8))
            elif name == "down_up":
                out = out.resize((224 // v, 224 // v), Image.BILINEAR).resize((224, 224), Image.BILINEAR)
            elif name == "noise":
                noise = np.random.default_rng(params["noise_seed"]).standard_normal((224, 224, 3)) * 255 * v ** 0.5
                out = Image.fromarray(np.clip(np.asarray(out) + noise, 0, 255).astype(np.uint8))
            else:
                out = out.filter(ImageFilter.GaussianBlur(v / 6))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=75)
    return np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def timed(fn, jobs) -> tuple[float, list]:
    """Seconds per job of `fn(*job)` (after one warm-up call) and the results."""
    fn(*jobs[0])
    t = time.perf_counter()
    out = [fn(*job) for job in jobs]
    return (time.perf_counter() - t) / len(jobs), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--draws", type=int, default=16, help="draws per frame")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="2 frames x 3 draws: a smoke test")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.draws = 2, 3

    import torch
    from transformers.utils import logging as hf_logging

    from natix.config import Preprocess, ViewRecipe
    from natix.data.challenge import challenge_recipe
    from natix.extract.backbones import load_backbone, save_tiny_dinov3
    from natix.extract.featurizer import Featurizer, as_chw

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    recipe = challenge_recipe("validator-e1", seed=0)
    frames = make_frames(args.frames)
    jobs = [(frame, f"frame{i}", k) for i, frame in enumerate(frames) for k in range(args.draws)]
    plain_jobs = [(frame, recipe.params(frame.shape[:2], fid, k)) for frame, fid, k in jobs]
    work = Path(tempfile.mkdtemp(prefix="natix-bench-"))
    try:
        backbone, _ = load_backbone(str(save_tiny_dinov3(work / "tiny")))
        featurizer = Featurizer(backbone, ViewRecipe(n_views=1), Preprocess())

        def natix_then_features(frame, fid, k):
            return featurizer.features([as_chw(recipe.draw(frame, fid, k)[0])])

        def plain_then_features(frame, params):
            return featurizer.features([as_chw(plain_challenge(frame, params))])

        natix_s, natix_out = timed(lambda f, i, k: recipe.draw(f, i, k)[0], jobs)
        plain_s, plain_out = timed(plain_challenge, plain_jobs)
        natix_fx, _ = timed(natix_then_features, jobs)
        plain_fx, _ = timed(plain_then_features, plain_jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    levels = np.bincount([p["level"] for _, p in plain_jobs], minlength=4).tolist()
    same = sum(np.array_equal(a, b) for a, b in zip(natix_out, plain_out, strict=True))
    print(f"\nchallenge benchmark: validator-e1 on {len(frames)} frames of 1920x1080, {len(jobs)} draws "
          f"(levels 0-3: {levels}), tiny DINOv3 (1 view), CPU ({torch.get_num_threads()} threads)")
    head = f"{'path':<58} {'natix ms':>9} {'plain ms':>9} {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for label, ours, theirs in [("challenge generation (draw -> decoded 224 JPEG)", natix_s, plain_s),
                                ("generation + feature extraction", natix_fx, plain_fx)]:
        print(f"{label:<58} {ours * 1e3:>9.1f} {theirs * 1e3:>9.1f} {theirs / ours:>5.2f}x")
    print(f"outputs identical to the plain path: {same}/{len(jobs)} (the plain path runs the installed torch's resize "
          "and PIL/numpy distortions, not the validator's torch 2.6 resize and OpenCV distortions that natix reproduces)")


if __name__ == "__main__":
    sys.exit(main())
