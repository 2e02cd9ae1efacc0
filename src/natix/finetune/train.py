"""Supervised fine-tuning: the backbone (LoRA, DoRA, last-k or full) and a head, trained together.

The forward is the one featurizer's (``Featurizer(..., grad=True)``): views are built exactly as
extraction builds them, so what was trained is what the cache will hold. Images are split by
image id exactly as tier 2 splits a cache (:func:`natix.heads.splits.make_splits`, same ratios and
seed, or a ``splits.json``), so ``val_select``, ``val_calib`` and ``val_test`` images are never
trained on. AdamW (backbone and head learning rates apart) with a linear warm-up then a cosine
decay; early stopping on the ``val_select`` loss; the best epoch's weights are kept.

With a challenge recipe (``challenge="validator-e1"``, see :mod:`natix.data.challenge`) the
validator's transforms are the training augmentation: at epoch ``e`` each training image is draw
``e`` of the recipe (fixed by the recipe's seed, the image id and ``e``, as ``natix extract
--challenge`` draws it), and its views are built from that image; validation and the final
metrics see draw 0 of every image, the same pixels every epoch.

Training is deterministic for a seed on CPU: each epoch's order comes from ``(seed, epoch)``, and
a checkpoint (``checkpoint.pt``, written atomically every `save_every` optimizer steps and at each
epoch end) holds everything a resumed run needs, so ``resume=True`` after a crash or ``kill -9``
ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix import metrics as M
from natix.config import Preprocess, ViewRecipe
from natix.data.challenge import challenge_recipe
from natix.errors import ConfigError
from natix.finetune.adapters import AdapterSpec
from natix.finetune.dist import Dist, setup, teardown
from natix.finetune.loop import Batches, challenge_draws, labeled_images, load_model
from natix.heads.splits import DEFAULT_RATIOS, SPLITS, Splits, make_splits
from natix.jsonio import write_json
from natix.progress import Progress, say

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class FinetuneConfig:
    """What and how to fine-tune (see `natix finetune --help` for each option)."""

    adapter: AdapterSpec = AdapterSpec()
    head: str = "linear"
    agg: str = "mean"
    epochs: int = 5
    lr: float = 1e-4  # backbone (adapters or unfrozen blocks)
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.1  # fraction of the optimizer steps spent warming up
    batch_size: int = 16
    grad_accum: int = 1
    patience: int = 2  # epochs without a better val_select loss before stopping
    seed: int = 0
    precision: str = "auto"  # bf16 autocast on CUDA, fp32 elsewhere
    checkpointing: bool = False  # gradient checkpointing in the backbone
    save_every: int = 50  # optimizer steps between checkpoints (and one at every epoch end)
    view_cache_mb: int = 1024  # memory for keeping decoded views (source images under a challenge) across epochs
    challenge: str = "clean"  # the challenge recipe training images go through (natix.data.challenge)
    challenge_seed: int = 0  # with the image id and the epoch it fixes each training draw

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum", "patience", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "head_lr"):
            if not 0 < getattr(self, name) < 10:
                raise ConfigError(f"{name} must lie in (0, 10), got {getattr(self, name)!r}")
        if isinstance(self.view_cache_mb, bool) or not isinstance(self.view_cache_mb, int) or self.view_cache_mb < 0:
            raise ConfigError(f"view cache must be a whole number of MiB >= 0, got {self.view_cache_mb!r}")
        if not 0 <= self.warmup < 1 or self.weight_decay < 0:
            raise ConfigError(f"warmup must lie in [0, 1) and weight decay be >= 0, got {self.warmup!r}, "
                              f"{self.weight_decay!r}")
        challenge_recipe(self.challenge, seed=self.challenge_seed)  # an unknown name or a bad seed: its error
        if self.challenge == "clean" and self.challenge_seed != 0:
            raise ConfigError(f"challenge seed {self.challenge_seed} needs a challenge recipe: pass --challenge "
                              "validator-e1 (clean trains on each image as it is, with no randomness)")

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "adapter": dataclasses.asdict(self.adapter)}


@dataclass
class FinetuneResult:
    """What :func:`finetune` wrote: the run, the adapter and how to extract with it, the metrics."""

    out: Path
    adapter: dict  # {"option": "--adapter" | "--backbone" | "--checkpoint", "path": ...}
    metrics: dict
    history: dict
    seconds: float
    resumed_at: tuple[int, int] | None = None  # (epoch, batch) a resumed run started from
    challenge: dict | None = None  # the challenge recipe's identity (name, seed, ...); None: clean images


def finetune(data, backbone: str, out, *, config: FinetuneConfig = FinetuneConfig(), recipe: ViewRecipe | None = None,
             preprocess: Preprocess = Preprocess(), checkpoint: str | None = None, init_adapter: str | None = None,
             splits_path=None, ratios=DEFAULT_RATIOS, split_seed: int = 0, device: str = "auto",
             resume: bool = False, progress: bool = True, allow_outside: bool = False) -> FinetuneResult:
    """Fine-tune `backbone` with a head on the labeled images of `data` (folder or manifest) and
    write the run directory `out`: ``adapter/``, ``head.safetensors``, ``config.json``,
    ``history.json``, ``metrics.json``, ``splits.json``.

    `recipe` defaults to the single global view. `init_adapter` starts from an earlier PEFT
    adapter (merged first). With `resume`, a ``checkpoint.pt`` in `out` is continued (it must
    come from the same options); without it an existing checkpoint is refused. Under ``torchrun``
    the processes train data-parallel (:mod:`natix.finetune.dist`); rank 0 writes the run and
    returns the result, the other ranks return None.
    """
    dist = setup(device)
    try:
        return _finetune(data, backbone, Path(out), config, recipe or ViewRecipe(n_views=1), preprocess, checkpoint,
                         init_adapter, splits_path, ratios, split_seed, dist, resume, progress, allow_outside)
    finally:
        teardown(dist)


def _finetune(data, backbone, out: Path, config, recipe, preprocess, checkpoint, init_adapter, splits_path, ratios,
              split_seed, dist: Dist, resume, progress, allow_outside) -> FinetuneResult:
    """The steps of :func:`finetune` in one process of the job (rank 0 writes)."""
    import torch

    t0 = time.perf_counter()
    if dist.main:
        check_out(out, resume)
    dist.barrier()
    images = labeled_images(data, allow_outside=allow_outside)
    splits = _splits(images, splits_path, ratios, split_seed)
    rows = splits.rows(images.ids, cache=data, owner=f"split file '{splits_path}'" if splits_path else None)
    draws = challenge_draws(config.challenge, config.challenge_seed, images)
    if dist.main:
        say(f"loading backbone {backbone}" + (f" with adapter {init_adapter}" if init_adapter else ""))
    model = load_model(backbone, config, recipe, preprocess, checkpoint=checkpoint, init_adapter=init_adapter,
                       device=dist.device, standardise_on=[images.paths[r] for r in rows["train"]], draws=draws)
    identity = _identity(backbone, checkpoint, init_adapter, recipe, preprocess, config, splits, draws)
    state = model.fresh_state(config, steps=_total_steps(len(rows["train"]), config))
    torch.manual_seed(config.seed + dist.rank)  # dropout, different per rank; a checkpoint restores the state
    resumed_at = None
    if resume and (out / CHECKPOINT).is_file():
        state = model.load_checkpoint(out / CHECKPOINT, identity)
        resumed_at = (state["epoch"], state["batch"])
    per_epoch = math.ceil(len(rows["train"]) / config.batch_size)
    bar = Progress(config.epochs * per_epoch, "finetune", "batch", enabled=progress and dist.main,
                   initial=state["epoch"] * per_epoch + state["batch"])
    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        _epoch(model, images, rows, config, state, out if dist.main else None, identity, bar, dist)
    bar.close()
    model.restore(state["best"])
    result = _write_run(out, model, images, rows, splits, identity, state, t0, resumed_at) if dist.main else None
    dist.barrier()
    return result


def _identity(backbone, checkpoint, init_adapter, recipe, preprocess, config, splits: Splits, draws) -> dict:
    """What the weights depend on (a checkpoint resumes only under the same): not how often they are
    saved or how much is kept in memory. The challenge enters as its recipe's identity (name, seed,
    version, settings), and only when there is one: a clean run's identity predates challenges."""
    skip = ("save_every", "view_cache_mb", "challenge", "challenge_seed")
    identity = {"backbone": backbone, "checkpoint": checkpoint, "init_adapter": init_adapter,
                "recipe": recipe.identity(), "preprocess": preprocess.identity(),
                "config": {k: v for k, v in config.to_json().items() if k not in skip}, "splits": splits.digest}
    if draws is not None:
        identity["challenge"] = draws.recipe.identity()
    return identity


def check_out(out: Path, resume: bool) -> None:
    """Refuse an `out` that holds something other than an earlier fine-tuning run, or a checkpoint without `resume`."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / CHECKPOINT).is_file()
                                              and not (out / "config.json").is_file())):
        raise ConfigError(f"'{out}' exists and is not a natix fine-tuning run: pass a new --out")
    if (out / CHECKPOINT).is_file() and not resume:
        raise ConfigError(f"'{out}' holds the checkpoint of an interrupted run: pass --resume to continue it, or a "
                          "new --out")
    out.mkdir(parents=True, exist_ok=True)


def _splits(images, splits_path, ratios, seed: int) -> Splits:
    """A splits.json (from a tier-2 run of the same images), or tier 2's default splits of these images."""
    if splits_path:
        return Splits.load(splits_path)
    return make_splits(images.ids, images.labels, images.groups, ratios=ratios, seed=seed, exclude=images.held_out)


def _total_steps(n_train: int, config: FinetuneConfig) -> int:
    return config.epochs * math.ceil(math.ceil(n_train / config.batch_size) / config.grad_accum)


def _epoch(model, images, rows: dict, config: FinetuneConfig, state: dict, out: Path | None, identity: dict, bar,
           dist: Dist) -> None:
    """One epoch (from `state`'s batch on, after a resume): optimizer steps every `grad_accum`
    batches, checkpoints every `save_every` steps, then the val_select loss and early stopping.
    Each process of the job takes its share of every batch; `out` None: this process writes nothing."""
    batches = Batches(rows["train"], config.batch_size, seed=config.seed, epoch=state["epoch"])
    for b in range(state["batch"], len(batches)):
        part = batches[b]
        group = range(b - b % config.grad_accum, min(b - b % config.grad_accum + config.grad_accum, len(batches)))
        denominator = sum(len(batches[g]) for g in group)  # the rows of this optimizer step, over all processes
        mine = dist.share(part)
        loss = model.loss([images.paths[r] for r in mine], images.labels[mine], denominator=denominator,
                          draw=state["epoch"])
        state["train_loss"].append(dist.total(loss, len(part))[0] / len(part))
        last = b == len(batches) - 1
        if (b + 1) % config.grad_accum == 0 or last:
            model.step(state, dist)
        state["batch"] = b + 1
        bar.update(1)
        due = state["steps"] % config.save_every == 0 and not last and (b + 1) % config.grad_accum == 0
        if due and out is not None:
            model.save_checkpoint(out / CHECKPOINT, state, identity)
    val = model.evaluate([images.paths[r] for r in rows["val_select"]], images.labels[rows["val_select"]])
    epoch_loss = float(np.mean(state["train_loss"])) if state["train_loss"] else float("nan")
    state["history"].append({"epoch": state["epoch"], "train_loss": epoch_loss, **val})
    if val["val_loss"] < state["best_loss"]:
        state["best_loss"], state["best"], state["bad_epochs"] = val["val_loss"], model.snapshot(), 0
        state["best_epoch"] = state["epoch"]
    else:
        state["bad_epochs"] += 1
    state["epoch"], state["batch"], state["train_loss"] = state["epoch"] + 1, 0, []
    if out is not None:
        model.save_checkpoint(out / CHECKPOINT, state, identity)


def _write_run(out: Path, model, images, rows: dict, splits: Splits, identity: dict, state: dict, t0: float,
               resumed_at) -> FinetuneResult:
    """Save the best weights, score every split, write the run's files; the checkpoint goes last."""
    adapter = model.save(out)
    metrics = {}
    for name in SPLITS:
        r = rows[name]
        prob = model.predict([images.paths[i] for i in r])
        metrics[name] = M.split_metrics(images.labels[r], prob)
    splits.save(out / "splits.json")
    history = {"epochs": state["history"], "best_epoch": state.get("best_epoch"), "steps": state["steps"]}
    write_json(out / "history.json", history)
    write_json(out / "metrics.json", metrics)
    write_json(out / "config.json", {**identity, "challenge": identity.get("challenge"), "adapter": adapter,
                                     "images": len(images.ids), "split_sizes": {k: len(v) for k, v in rows.items()}})
    (out / CHECKPOINT).unlink(missing_ok=True)
    return FinetuneResult(out, adapter, metrics, history, time.perf_counter() - t0, resumed_at,
                          identity.get("challenge"))
