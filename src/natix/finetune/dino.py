"""Extended self-supervised pretraining (``natix finetune --objective dino``), ExPLoRA-style.

ExPLoRA (Khanna et al. 2024) continues a pretrained ViT's own self-supervised objective on
unlabeled images of the new domain, training LoRA adapters on every block and the last block in
full, then fine-tunes on labels from there. This module does the DINO part of that recipe
(Caron et al. 2021): a student and an EMA teacher (the same backbone and adapters, momentum
following a cosine schedule from `momentum` to 1), each with a projection head (MLP → L2-normalised
bottleneck → weight-normalised prototypes); the teacher sees two global crops, the student the
global crops and several small local crops, and the student's softmax (temperature
`student_temp`) is trained to match the teacher's centred, sharpened softmax (`teacher_temp`,
centre an EMA of the teacher outputs) on every pair of different crops.

Left out of DINOv2/DINOv3's full recipe: the iBOT masked-patch loss, the KoLeo regulariser,
colour jitter, blur and solarisation of the crops, and the teacher-temperature warm-up. Crops are
random-resized crops (global 32-100 % of the area, local 5-32 %) with horizontal flips, drawn
deterministically from (seed, epoch, image). Labels are ignored. The result is an adapter like
the supervised path's (LoRA plus the last block, in one PEFT directory), for ``natix extract
--adapter`` or ``natix finetune --init-adapter``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix.config import Preprocess
from natix.errors import ConfigError
from natix.jsonio import write_json


@dataclass(frozen=True)
class DinoConfig:
    """The DINO objective's own options (the adapter and optimiser come from `FinetuneConfig`)."""

    global_size: int = 224
    local_size: int = 96
    local_crops: int = 4
    prototypes: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    momentum: float = 0.996  # teacher EMA momentum at the start; a cosine takes it to 1

    def __post_init__(self):
        for name in ("global_size", "local_size"):
            if getattr(self, name) % 16 or getattr(self, name) < 16:
                raise ConfigError(f"{name} must be a positive multiple of the 16-pixel patch, got {getattr(self, name)}")
        if self.local_crops < 0 or self.prototypes < 2:
            raise ConfigError("local crops must be >= 0 and prototypes >= 2")


def _head(dim: int, prototypes: int):
    """The projection head: MLP → L2-normalised bottleneck → weight-normalised prototypes."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(dim, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 64))
            self.last = nn.utils.parametrizations.weight_norm(nn.Linear(64, prototypes, bias=False))

        def forward(self, x):
            return self.last(torch.nn.functional.normalize(self.mlp(x), dim=-1))

    return Head()


def crops(image, rng: np.random.Generator, cfg: DinoConfig) -> tuple[list, list]:
    """Two global and `cfg.local_crops` local crops of one uint8 ``[3, H, W]`` image (uint8, resized, flipped)."""
    from torchvision.transforms.v2 import functional as F

    from natix.data.distortions import random_resized_crop_box

    h, w = image.shape[1:]

    def crop(scale, size):
        top, left, ch, cw = random_resized_crop_box(h, w, rng, scale=scale, ratio=(3 / 4, 4 / 3))
        out = F.resized_crop(image, top, left, ch, cw, [size, size], antialias=True)
        return F.horizontal_flip(out) if rng.random() < 0.5 else out

    return ([crop((0.32, 1.0), cfg.global_size) for _ in range(2)],
            [crop((0.05, 0.32), cfg.local_size) for _ in range(cfg.local_crops)])


def dino_loss(student: list, teacher: list, center, cfg: DinoConfig):
    """Cross-entropy of the student's softmax against the teacher's centred, sharpened one, over
    every (teacher global crop, different student crop) pair, averaged; and the teacher batch mean."""
    import torch

    targets = [torch.softmax((t - center) / cfg.teacher_temp, dim=-1).detach() for t in teacher]
    total, pairs = 0.0, 0
    for iq, q in enumerate(targets):
        for v, s in enumerate(student):
            if v == iq:
                continue
            total = total + torch.sum(-q * torch.log_softmax(s / cfg.student_temp, dim=-1), dim=-1)
            pairs += 1
    return total / pairs, torch.cat(teacher).mean(dim=0)


class Dino:
    """Student (the trainable backbone + head), EMA teacher and the running centre."""

    def __init__(self, backbone, dim: int, cfg: DinoConfig, preprocess: Preprocess, device):
        import torch

        self.cfg, self.preprocess, self.device = cfg, preprocess, device
        self.backbone = backbone.to(device)
        self.head = _head(dim, cfg.prototypes).to(device)
        self.teacher = copy.deepcopy(self.backbone).eval()
        self.teacher_head = copy.deepcopy(self.head).eval()
        for p in [*self.teacher.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.center = torch.zeros(cfg.prototypes, device=device)

    def embed(self, model, head, views: list):
        """The head's outputs for a list of same-size uint8 crops."""
        import torch

        from natix.extract.views import normalize

        pixels = normalize(torch.stack(views).to(self.device), self.preprocess.mean, self.preprocess.std)
        return head(model(pixels))

    def loss(self, batch: list[tuple[list, list]], denominator: float):
        """Forward and backward one share of a batch: loss summed over its images / `denominator`."""
        import torch

        g = [self.embed(self.backbone, self.head, [b[0][k] for b in batch]) for k in range(2)]
        loc = [self.embed(self.backbone, self.head, [b[1][k] for b in batch]) for k in range(self.cfg.local_crops)]
        with torch.no_grad():
            t = [self.embed(self.teacher, self.teacher_head, [b[0][k] for b in batch]) for k in range(2)]
        per_image, mean = dino_loss(g + loc, t, self.center, self.cfg)
        (per_image.sum() / denominator).backward()
        return float(per_image.sum().detach()), mean.detach() * len(batch)

    def update_teacher(self, momentum: float, center_sum, count: float) -> None:
        """EMA of the student into the teacher, and of the teacher outputs' mean into the centre."""
        import torch

        with torch.no_grad():
            for t, s in ((self.teacher, self.backbone), (self.teacher_head, self.head)):
                teacher = dict(t.named_parameters())
                for name, p in s.named_parameters():
                    if p.requires_grad:  # frozen weights are the teacher's already
                        teacher[name].mul_(momentum).add_(p.detach(), alpha=1 - momentum)
            self.center.mul_(self.cfg.center_momentum).add_(center_sum / count, alpha=1 - self.cfg.center_momentum)


def momentum_at(step: int, steps: int, start: float) -> float:
    """The teacher's EMA momentum at `step` of `steps`: a cosine from `start` to 1."""
    return 1 - (1 - start) * (math.cos(math.pi * step / max(1, steps)) + 1) / 2


def pretrain(data, backbone: str, out, *, config, dino: DinoConfig = DinoConfig(), preprocess: Preprocess = Preprocess(),
             checkpoint: str | None = None, device: str = "auto", progress: bool = True,
             allow_outside: bool = False) -> dict:
    """Continue self-supervised (DINO) pretraining of `backbone` with LoRA on every block and the
    last `config.adapter.full_blocks` blocks in full, on the images of `data` (labels ignored);
    write ``adapter/``, ``config.json`` and ``history.json`` into `out`; return what was written."""
    import torch

    from natix.finetune.adapters import save_adapter
    from natix.finetune.dist import setup, teardown
    from natix.finetune.loop import Batches, decode_chw, labeled_images, schedule
    from natix.finetune.train import check_out
    from natix.progress import Progress

    t0 = time.perf_counter()
    _check(config)
    dist = setup(device)
    try:
        if dist.main:
            check_out(Path(out), resume=False)
        dist.barrier()
        images = labeled_images(data, allow_outside=allow_outside, labeled=False)
        model, params, opt = _model(backbone, checkpoint, config, dino, preprocess, dist)
        rows = np.arange(len(images.ids))
        steps = config.epochs * math.ceil(len(rows) / config.batch_size)
        bar, history, step = Progress(steps, "dino", "batch", enabled=progress and dist.main), [], 0
        for epoch in range(config.epochs):
            batches, losses = Batches(rows, config.batch_size, seed=config.seed, epoch=epoch), []
            for b in range(len(batches)):
                part = batches[b]
                mine = dist.share(part)
                views = [crops(decode_chw(images.paths[r]), np.random.default_rng([config.seed, epoch, int(r)]), dino)
                         for r in mine]
                model.backbone.eval()  # as extraction runs it (no RoPE augmentation)
                loss, center = model.loss(views, len(part)) if views else (0.0, torch.zeros_like(model.center))
                dist.sum_gradients(params + list(model.head.parameters()))
                for group in opt.param_groups:
                    group["lr"] = config.lr * schedule(step, steps, config.warmup)
                opt.step()
                opt.zero_grad(set_to_none=True)
                model.update_teacher(momentum_at(step, steps, dino.momentum), _summed(dist, center), len(part))
                losses.append(dist.total(loss)[0] / len(part))
                step += 1
                bar.update(1)
            history.append({"epoch": epoch, "dino_loss": float(np.mean(losses))})
        bar.close()
        if not dist.main:
            dist.barrier()
            return {}
        out = Path(out)
        adapter = save_adapter(model.backbone, config.adapter, out / "adapter")
        write_json(out / "history.json", {"epochs": history, "steps": step})
        write_json(out / "config.json", {"objective": "dino", "backbone": backbone, "checkpoint": checkpoint,
                                         "adapter": adapter, "images": len(images.ids), "config": config.to_json(),
                                         "dino": dino.__dict__, "seconds": time.perf_counter() - t0})
        dist.barrier()
        return {"out": str(out), "adapter": adapter, "history": history, "seconds": time.perf_counter() - t0}
    finally:
        teardown(dist)


def _model(backbone: str, checkpoint, config, dino: DinoConfig, preprocess: Preprocess, dist):
    """The backbone with its adapters attached, inside the student/teacher model, the trained
    parameters and their optimizer."""
    import torch

    from natix.extract.backbones import load_backbone
    from natix.extract.featurizer import resolve_device
    from natix.finetune.adapters import attach
    from natix.progress import say

    if dist.main:
        say(f"loading backbone {backbone}")
    bb, _ = load_backbone(backbone, checkpoint=checkpoint)
    torch.manual_seed(config.seed)
    params = attach(bb, config.adapter)
    model = Dino(bb, bb.dim, dino, preprocess, resolve_device(dist.device))
    opt = torch.optim.AdamW([{"params": params}, {"params": list(model.head.parameters())}], lr=config.lr,
                            weight_decay=config.weight_decay)
    return model, params, opt


def _check(config) -> None:
    """A one-line error for the options of `config` that DINO pretraining cannot honour."""
    if not config.adapter.peft:
        raise ConfigError("--objective dino trains LoRA/DoRA adapters (ExPLoRA): pass --method lora or dora")
    if config.challenge != "clean":
        raise ConfigError(f"--objective dino takes no challenge recipe (its crops are its augmentation), got "
                          f"{config.challenge}: pass it to the supervised run that follows")


def _summed(dist, tensor):
    """A tensor summed over the job's processes."""
    if dist.world == 1:
        return tensor
    import torch.distributed as td

    td.all_reduce(tensor, op=td.ReduceOp.SUM)
    return tensor

