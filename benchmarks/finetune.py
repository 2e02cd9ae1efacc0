"""Fine-tuning speed and memory: `natix finetune` against a plain transformers + PEFT training loop.

Same images (demo street scenes), same random tiny DINOv3, same LoRA (rank 8 on the attention and
MLP projections), same linear head on the CLS token, same batch size and epochs, AdamW:

- natix: ``natix.finetune.finetune`` (views through the one featurizer, image-id splits, early
  stopping bookkeeping, checkpoints, the run's files); its images/s counts the training images of
  every epoch over the whole call (standardisation pass, validation, metrics and saving included);
- plain: PIL decode + resize to 224 + normalise, ``get_peft_model`` on ``DINOv3ViTModel``, a
  ``nn.Linear`` on the CLS token, BCE, AdamW, the same number of training images per epoch; only
  the training loop is timed.

Each path runs in a fresh process (started by this one) with an explicit thread count, so its peak
resident set (libraries, model, data and all) is its own.

    python benchmarks/finetune.py                # 96 images, 3 epochs
    python benchmarks/finetune.py --quick        # seconds (smoke run)
    python benchmarks/finetune.py --device cuda --hidden 1024 --layers 24   # ViT-L-sized, random, on a GPU
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path


def _peak_rss_mib() -> float:
    """This process's peak resident set so far (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_loop(paths, labels, backbone_dir, *, epochs: int, batch: int, device: str, seed: int = 0) -> int:
    """The obvious script; returns the training images it processed."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from PIL import Image
    from transformers import DINOv3ViTModel

    torch.manual_seed(seed)
    model = DINOv3ViTModel.from_pretrained(backbone_dir).to(device)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj", "up_proj", "down_proj"]))
    head = torch.nn.Linear(model.config.hidden_size, 1).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    seen = 0
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(paths))
        for i in range(0, len(order), batch):
            rows = order[i:i + batch]
            x = torch.stack([(torch.from_numpy(np.asarray(Image.open(paths[r]).convert("RGB").resize(
                (224, 224), Image.BILINEAR))).permute(2, 0, 1).float() / 255 - mean) / std for r in rows]).to(device)
            y = torch.tensor([labels[r] for r in rows], dtype=torch.float32, device=device)
            logit = head(model(pixel_values=x).last_hidden_state[:, 0]).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(rows)
    return seen


def _natix(work: Path, backbone: str, args) -> dict:
    """The natix path in this (fresh) process: training images/s of the whole call and peak RSS."""
    import torch

    from natix.finetune import AdapterSpec
    from natix.finetune.train import FinetuneConfig, finetune

    torch.set_num_threads(args.threads)
    config = FinetuneConfig(adapter=AdapterSpec(rank=8), epochs=args.epochs, patience=args.epochs,
                            batch_size=args.batch, lr=1e-4)
    t0 = time.perf_counter()
    res = finetune(work / "images", backbone, work / "run", config=config, device=args.device, progress=False)
    seconds = time.perf_counter() - t0
    train = json.loads((work / "run" / "config.json").read_text())["split_sizes"]["train"]
    epochs = len(res.history["epochs"])
    return {"images_per_s": train * epochs / seconds, "peak_mib": _peak_rss_mib(), "train": train, "epochs": epochs}


def _plain(work: Path, backbone: str, args, epochs: int) -> dict:
    """The plain path in this (fresh) process, on natix's training images."""
    import torch

    from natix.finetune.loop import labeled_images

    torch.set_num_threads(args.threads)
    train_ids = set(json.loads((work / "run" / "splits.json").read_text())["ids"]["train"])
    images = labeled_images(work / "images")
    order = [i for i, image_id in enumerate(images.ids) if image_id in train_ids]
    t0 = time.perf_counter()
    seen = plain_loop([images.paths[i] for i in order], [int(images.labels[i]) for i in order], backbone,
                      epochs=epochs, batch=args.batch, device=args.device)
    return {"images_per_s": seen / (time.perf_counter() - t0), "peak_mib": _peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.images, args.epochs, args.batch = 24, 1, 8
    from concurrent.futures import ProcessPoolExecutor

    from natix.data.demo import make_demo_images
    from natix.extract.backbones import save_tiny_dinov3

    work = Path(tempfile.mkdtemp(prefix="natix-bench-ft-"))
    spawn = multiprocessing.get_context("spawn")  # a fresh process per path: its own peak memory
    try:
        make_demo_images(work / "images", n=args.images, seed=0, square_fraction=0.0)
        backbone = str(save_tiny_dinov3(work / "bb", seed=0, hidden_size=args.hidden, layers=args.layers))
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            ours = pool.submit(_natix, work, backbone, args).result()
        with ProcessPoolExecutor(1, mp_context=spawn) as pool:
            plain = pool.submit(_plain, work, backbone, args, ours["epochs"]).result()
        print(f"\nfine-tuning benchmark: tiny DINOv3 (hidden {args.hidden}, {args.layers} layers), LoRA r=8, "
              f"{args.images} demo images ({ours['train']} train) x {ours['epochs']} epochs, batch {args.batch}, "
              f"{args.device} ({args.threads} threads); each path in a fresh process")
        print(f"{'path':<44}{'train images/s':>16}{'peak RSS MiB':>16}")
        print("-" * 76)
        print(f"{'natix finetune (whole call)':<44}{ours['images_per_s']:>16.1f}{ours['peak_mib']:>16.0f}")
        print(f"{'plain transformers + PEFT loop':<44}{plain['images_per_s']:>16.1f}{plain['peak_mib']:>16.0f}")
        print(f"{'ratio natix / plain':<44}{ours['images_per_s'] / plain['images_per_s']:>15.2f}x"
              f"{ours['peak_mib'] / plain['peak_mib']:>15.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
