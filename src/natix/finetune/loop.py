"""The pieces of the fine-tuning loop: the labeled images, the batch order, the challenge draws
that training images may go through, and the model (backbone through the featurizer, plus a head)
with its optimizer, checkpoints and best-epoch snapshots."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix.config import Preprocess, ViewRecipe
from natix.errors import ConfigError, DataError


@dataclass(frozen=True)
class Images:
    """The labeled, readable images of a source, one per distinct content (first listing kept)."""

    paths: list[str]
    ids: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    held_out: frozenset[str]  # ids the source lists with conflicting labels: in no split


def labeled_images(source, *, allow_outside: bool = False, labeled: bool = True) -> Images:
    """The labeled images of a folder or manifest (with ``labeled=False`` every readable image,
    label -1 where unknown), keyed by content id like a cache."""
    from natix.data.sources import discover, hash_files

    records = discover(source, allow_outside=allow_outside)
    first: dict[str, tuple] = {}
    labels_of: dict[str, set] = {}
    for rec, image_id in zip(records, hash_files([r.path for r in records])):
        if isinstance(image_id, Exception) or (labeled and rec.label is None):
            continue
        label = -1 if rec.label is None else rec.label
        first.setdefault(image_id, (str(rec.path), label, rec.group or ""))
        labels_of.setdefault(image_id, set()).add(label)
    if not first:
        what = "labeled images: fine-tuning needs labels (class folders or a manifest with a label column)" if labeled \
            else "readable images"
        raise DataError(f"'{source}' has no {what}")
    ids = sorted(first)
    return Images(paths=[first[i][0] for i in ids], ids=np.array(ids), labels=np.array([first[i][1] for i in ids]),
                  groups=np.array([first[i][2] for i in ids], dtype=object),
                  held_out=frozenset(i for i, v in labels_of.items() if len(v) > 1))


def schedule(step: int, steps: int, warmup: float) -> float:
    """The learning-rate factor at optimizer step `step` of `steps`: a linear warm-up over the
    first `warmup` fraction of the steps, then a cosine decay to 0."""
    warm = max(1, int(warmup * steps)) if warmup > 0 else 0
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))


def decode(path: str) -> np.ndarray:
    """The image at `path` decoded as extraction decodes it, as a uint8 ``[H, W, 3]`` array."""
    from natix.data.decode import decode_image, read_image

    return decode_image(read_image(path))


def decode_chw(path: str):
    """The image at `path` decoded as extraction decodes it, as a uint8 ``[3, H, W]`` tensor."""
    from natix.extract.featurizer import as_chw

    return as_chw(decode(path))


@dataclass(frozen=True)
class ChallengeDraws:
    """Training images as a challenge recipe's draws: draw `d` of an image is fixed by the recipe,
    its seed, the image's content id and `d` (as ``natix extract --challenge`` draws it), so every
    process of a job and a resumed run see the same pixels."""

    recipe: object  # a natix.data.challenge recipe
    ids: dict[str, str]  # image path -> content id

    def image(self, path: str, source: np.ndarray, draw: int) -> np.ndarray:
        """Draw `draw` of `source` (the decoded image at `path`, ``[H, W, 3]`` uint8), after the
        recipe's JPEG round trip (uint8 ``[H', W', 3]``)."""
        try:
            return self.recipe.draw(source, self.ids[path], draw)[0]
        except DataError as exc:  # e.g. a frame too thin to letterbox
            raise DataError(f"image '{path}': challenge {self.recipe.name} cannot transform it ({exc})") from None


def challenge_draws(name: str, seed: int, images: Images) -> ChallengeDraws | None:
    """The draws of challenge recipe `name` for `images`; None for "clean" (the images themselves)."""
    from natix.data.challenge import challenge_recipe

    recipe = challenge_recipe(name, seed=seed)
    if name == "clean":
        return None
    return ChallengeDraws(recipe, dict(zip(images.paths, images.ids.tolist())))


class Batches:
    """The training rows of one epoch in batches, in an order fixed by (seed, epoch): a resumed
    epoch sees the same batches as an uninterrupted one."""

    def __init__(self, rows: np.ndarray, batch_size: int, *, seed: int, epoch: int):
        self.rows = np.random.default_rng([seed, epoch]).permutation(np.asarray(rows))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def __getitem__(self, b: int) -> np.ndarray:
        return self.rows[b * self.batch_size:(b + 1) * self.batch_size]


def load_model(backbone: str, config, recipe: ViewRecipe, preprocess: Preprocess, *, checkpoint, init_adapter,
               device: str, standardise_on: list[str], draws: ChallengeDraws | None = None) -> Model:
    """The backbone made trainable as `config.adapter` says, its featurizer and a fresh head
    standardised on the features of `standardise_on` (the training images as the first epoch
    sees them, before any step). With `draws`, images go through their challenge draws first."""
    import torch

    from natix.extract.backbones import load_backbone
    from natix.extract.featurizer import Featurizer
    from natix.finetune.adapters import attach
    from natix.heads.config import HeadConfig

    bb, _ = load_backbone(backbone, checkpoint=checkpoint, adapter=init_adapter)
    torch.manual_seed(config.seed)  # the adapters' and the head's initial weights
    params = attach(bb, config.adapter)
    if config.checkpointing:
        _gradient_checkpointing(bb)
    featurizer = Featurizer(bb, recipe, preprocess, device=device, precision=config.precision, grad=True,
                            store_dtype="float32", batch_size=config.batch_size)
    head = HeadConfig(head=config.head, agg=config.agg).build(bb.dim, recipe.n_views).to(featurizer.device)
    model = Model(featurizer, head, config, params, stacked=init_adapter is not None, draws=draws)
    with torch.no_grad():
        feats = torch.cat([model.features(standardise_on[i:i + 64], draw=0)
                           for i in range(0, len(standardise_on), 64)])
    flat = feats.reshape(-1, feats.shape[-1])
    head.set_standardisation(flat.mean(0), flat.std(0))
    return model


def _gradient_checkpointing(backbone) -> None:
    """Recompute activations in the backward pass instead of storing them (less memory, more time)."""
    base = backbone.model.get_base_model() if hasattr(backbone.model, "get_base_model") else backbone.model
    if hasattr(base, "gradient_checkpointing_enable"):
        base.gradient_checkpointing_enable()
    elif hasattr(base, "set_grad_checkpointing"):
        base.set_grad_checkpointing(True)
    else:
        raise ConfigError("this backbone has no gradient checkpointing: drop --checkpointing")


class Model:
    """Backbone (through the featurizer) + head, with the optimizer and learning-rate schedule.

    With `draws` the model sees each image as a challenge draw: draw `d` where a method takes
    `draw` (the training loop passes the epoch), draw 0 for predictions and validation.
    """

    def __init__(self, featurizer, head, config, backbone_params: list, *, stacked: bool = False,
                 draws: ChallengeDraws | None = None):
        self.featurizer, self.head, self.config = featurizer, head, config
        # Trained on top of an earlier adapter (merged at load): an adapter of this run alone would
        # miss that one, so the whole merged backbone is what gets saved.
        self.stacked = stacked
        self.backbone = featurizer.backbone
        self.backbone_params = backbone_params
        self.draws = draws
        self.optimizer = self.scheduler = None
        # Kept after the first decode while they fit in `view_cache_mb`, so later epochs skip
        # decoding: an image's uint8 views (the same every epoch, so resizing is skipped too),
        # or under a challenge the decoded source image (its draw, and so its views, change
        # with the epoch).
        self._kept: dict[str, object] = {}
        self._kept_bytes = 0

    # -- data
    def features(self, paths: list[str], draw: int):
        """float32 features ``[B, V, D]`` of the images at `paths` (their challenge draw `draw`
        under a challenge), autograd as the caller's context."""
        return self.featurizer.forward(self.featurizer.stack([self._image_views(p, draw) for p in paths]))

    def _image_views(self, path: str, draw: int) -> dict:
        """One image's uint8 views ``{S: [V_S, 3, S, S]}`` (of its challenge draw `draw` under a
        challenge), built as extraction builds them."""
        if self.draws is None:
            return self._kept_or_made(path, lambda: self._views_of(decode_chw(path)))
        from natix.extract.featurizer import as_chw

        source = self._kept_or_made(path, lambda: decode(path))
        return self._views_of(as_chw(self.draws.image(path, source, draw)))

    def _views_of(self, image) -> dict:
        """The views of one uint8 ``[3, H, W]`` image, by the featurizer."""
        return {s: v[0] for s, v in self.featurizer.views([image]).items()}

    def _kept_or_made(self, path: str, make):
        """What is kept for `path`, else ``make()``, kept while the kept bytes fit in `view_cache_mb`."""
        value = self._kept.get(path)
        if value is None:
            value = make()
            size = value.nbytes if isinstance(value, np.ndarray) else \
                sum(v.numel() * v.element_size() for v in value.values())
            if self._kept_bytes + size <= self.config.view_cache_mb * 2**20:
                self._kept[path] = value
                self._kept_bytes += size
        return value

    def logits(self, paths: list[str], draw: int):
        return self.head(self.features(paths, draw))["logit"]

    # -- training
    def fresh_state(self, config, *, steps: int) -> dict:
        """A new optimizer and warm-up + cosine schedule over `steps` optimizer steps, and the loop's state."""
        import torch

        groups = [{"params": self.backbone_params, "lr": config.lr},
                  {"params": [p for p in self.head.parameters() if p.requires_grad], "lr": config.head_lr}]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda step: schedule(step, steps, config.warmup))
        return {"epoch": 0, "batch": 0, "steps": 0, "history": [], "train_loss": [], "best_loss": float("inf"),
                "best": self.snapshot(), "best_epoch": None, "bad_epochs": 0}

    def train_mode(self) -> None:
        """The head trains; the backbone runs as extraction runs it (eval: no DINOv3 RoPE
        augmentation, so what is trained is what the cache will hold), adapter dropout aside."""
        self.head.train()
        self.backbone.eval()
        for name, module in self.backbone.named_modules():
            if "lora_dropout" in name:
                module.train()

    def loss(self, paths: list[str], labels: np.ndarray, *, denominator: float, draw: int) -> float:
        """Forward and backward this process's share of a batch (gradients accumulate), its BCE
        summed and divided by `denominator` (the global batch size times the accumulation); the sum.
        Under a challenge the images are their draw `draw` (the epoch)."""
        import torch

        if not paths:
            return 0.0
        self.train_mode()
        y = torch.as_tensor(labels, dtype=torch.float32, device=self.featurizer.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(self.logits(paths, draw), y, reduction="sum")
        (loss / denominator).backward()
        return float(loss.detach())

    def step(self, state: dict, dist) -> None:
        """One optimizer step on the gradients summed over the job's processes."""
        dist.sum_gradients(self.backbone_params + [p for p in self.head.parameters() if p.requires_grad])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        state["steps"] += 1

    def predict(self, paths: list[str], batch: int = 64) -> np.ndarray:
        """P(roadwork) of each image (draw 0 under a challenge: the same pixels every epoch), in
        eval mode, without gradients."""
        import torch

        self.backbone.eval()
        self.head.eval()
        with torch.no_grad():
            parts = [torch.sigmoid(self.logits(paths[i:i + batch], draw=0)).double().cpu().numpy()
                     for i in range(0, len(paths), batch)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def evaluate(self, paths: list[str], labels: np.ndarray) -> dict:
        """val_select loss (mean BCE) and accuracy."""
        from natix import metrics as M

        p = np.clip(self.predict(paths), 1e-7, 1 - 1e-7)
        return {"val_loss": float(M.nll(labels, p)), "val_accuracy": float(M.accuracy(labels, p))}

    # -- weights
    def snapshot(self) -> dict:
        """Copies of the trained weights: the backbone's trainable parameters and the head's state."""
        trainable = {n: p.detach().clone() for n, p in self.backbone.named_parameters() if p.requires_grad}
        return {"backbone": trainable, "head": {k: v.detach().clone() for k, v in self.head.state_dict().items()}}

    def restore(self, snap: dict) -> None:
        import torch

        with torch.no_grad():
            named = dict(self.backbone.named_parameters())
            for n, v in snap["backbone"].items():
                named[n].copy_(v)
        self.head.load_state_dict(snap["head"])

    def save_checkpoint(self, path: Path, state: dict, identity: dict) -> None:
        """Everything a resumed run needs, written atomically (a kill leaves the previous checkpoint)."""
        import torch

        body = {"identity": identity, "state": state, "weights": self.snapshot(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state()}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(body, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Path, identity: dict) -> dict:
        """Restore a checkpoint written with the same options; return the loop's state."""
        import torch

        try:
            body = torch.load(path, map_location=self.featurizer.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means the same to the user
            raise DataError(f"checkpoint '{path}' is unreadable ({type(exc).__name__}): delete it to start over") from None
        if body.get("identity") != identity:
            raise ConfigError(f"checkpoint '{path}' was written with other options or images: rerun the same command "
                              "to resume it, or pass a new --out")
        self.restore(body["weights"])
        self.optimizer.load_state_dict(body["optimizer"])
        self.scheduler.load_state_dict(body["scheduler"])
        torch.set_rng_state(body["rng"].cpu())
        return body["state"]

    def save(self, out: Path) -> dict:
        """The adapter (see :func:`natix.finetune.adapters.save_adapter`) and ``head.safetensors``."""
        from safetensors.torch import save_file

        from natix.finetune.adapters import AdapterSpec, merged, save_adapter

        spec = self.config.adapter
        if self.stacked and spec.peft:
            merged(self.backbone, spec)
            spec = AdapterSpec(method="full")
        info = save_adapter(self.backbone, spec, out / "adapter")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(out / "head.safetensors"))
        return info


__all__ = ["Batches", "ChallengeDraws", "Images", "Model", "challenge_draws", "decode", "decode_chw",
           "labeled_images", "load_model", "schedule"]
