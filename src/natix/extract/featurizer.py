"""The one featurizer: decoded images → views → backbone → per-view features ``[B, V, D]``.

Extraction (the cache) and serving (bundles) both run the backbone through a `Featurizer`, so
what is served is what was cached, bit for bit on CPU. Its steps are usable one by one, because
the CPU extractor builds the uint8 views in DataLoader workers:

- :meth:`Featurizer.views`: ``[3, H, W]`` uint8 images → ``{S: uint8 [B, V_S, 3, S, S]}``;
- :meth:`Featurizer.stack`: per-image view stacks (from workers) → one batch of views;
- :meth:`Featurizer.forward`: views → float32 ``[B, V, D]`` on the featurizer's device;
- :meth:`Featurizer.store`: float32 features → numpy in the cache's store dtype (the rounding
  the cache applies, so a head sees the values it was trained on);
- ``featurizer(images)`` is views then forward, :meth:`Featurizer.features` adds the store step.

There is one CUDA out-of-memory back-off: on OOM the same images are retried with half as many
images per forward, a warning is logged, and later batches keep the reached size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from natix.config import PRECISIONS, STORE_DTYPES, Preprocess, ViewRecipe
from natix.errors import ConfigError
from natix.extract.views import build_views, normalize, view_table

log = logging.getLogger(__name__)

__all__ = ["Featurizer", "as_chw", "fold_normalization", "resolve_device", "resolve_precision"]


def resolve_device(device: str):
    """'auto' → cuda when available, else cpu; refuse cuda without a GPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}': pass auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible: pass --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) visible: "
                          f"pass cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return dev


def resolve_precision(precision: str, device) -> str:
    """'auto' → bf16 on CUDA, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{precision}': pass one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def check_store_dtype(store_dtype: str) -> str:
    """`store_dtype` when it is one the cache can hold; a one-line error otherwise."""
    if store_dtype not in STORE_DTYPES:
        raise ConfigError(f"unknown store dtype '{store_dtype}': pass one of {', '.join(STORE_DTYPES)}")
    return store_dtype


def as_chw(image: np.ndarray):
    """A decoded ``[H, W, 3]`` uint8 array → a ``[3, H, W]`` tensor view (channels-last strides,
    which torch's uint8 resize wants; no copy)."""
    import torch

    return torch.from_numpy(image).permute(2, 0, 1)


def fold_normalization(backbone, mean, std) -> bool:
    """Fold ``(x/255 - mean) / std`` into the patch-embedding convolution, in place.

    The patch embedding is a stride-16, kernel-16, unpadded convolution, hence affine in its
    input, so ``conv(W, (x/255 - m)/s) + b == conv(W / (255 s), x) + b - Σ W·m/s`` exactly in
    real arithmetic. The model then takes raw 0..255 pixels, which saves three passes over
    every view. Returns False (and changes nothing) when the backbone has no such convolution.
    """
    import torch

    conv = backbone.patch_embedding()
    if not isinstance(conv, torch.nn.Conv2d) or conv.padding not in ((0, 0), "valid") \
            or conv.kernel_size != conv.stride or conv.in_channels != 3:
        return False
    m = torch.as_tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad():
        w = conv.weight.double()
        shift = (w * (m / s)).sum(dim=(1, 2, 3))
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
        conv.weight.copy_((w / (255.0 * s)).to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = torch.nn.Parameter((bias - shift).to(conv.weight.dtype), requires_grad=False)
        else:
            conv.bias.copy_((bias - shift).to(conv.bias.dtype))
    return True


class Featurizer:
    """Decoded images → per-view features ``[B, V, D]`` with one backbone, recipe and precision.

    Parameters
    ----------
    backbone : a `Backbone` from `natix.extract.backbones.load_backbone` (its pooling is the
        features' pooling). Moved to `device`; in inference mode and fp32 its input
        normalisation is folded into its patch embedding, in place.
    recipe, preprocess : the view recipe and preprocessing (mean/std) of the features.
    device : a torch device, or "auto" / "cpu" / "cuda[:N]".
    precision : "fp32", "bf16" (autocast) or "auto" (bf16 on CUDA, fp32 elsewhere).
    store_dtype : the dtype :meth:`store` rounds to ("float16" as in the cache, or "float32").
    batch_size : images per forward; halved on CUDA out-of-memory and kept for later batches.
    grad : False (default) runs under ``torch.inference_mode`` and folds the normalisation in
        fp32 (exact in real arithmetic, and what the cache was extracted with). True keeps
        autograd on and never folds, so the backbone's own weights are the ones trained
        (fine-tuning); the caller owns ``train()`` / ``eval()`` and ``requires_grad``.
    compile : run the backbone through ``torch.compile`` (a short last batch is padded to the batch
        size, so the compiled graph is not built again for it).

    Attributes
    ----------
    folded : whether the normalisation was folded into the patch embedding.
    """

    def __init__(self, backbone, recipe: ViewRecipe, preprocess: Preprocess, *, device="cpu",
                 precision: str = "fp32", store_dtype: str = "float32", batch_size: int = 32,
                 grad: bool = False, compile: bool = False):
        import torch

        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}: pass 1 or more")
        self.device = resolve_device(device) if isinstance(device, str) else torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.store_dtype = check_store_dtype(store_dtype)
        self.recipe, self.preprocess = recipe, preprocess
        self.batch_size, self.grad = batch_size, grad
        # Folding is exact in real arithmetic; in bf16 the folded bias loses digits, so fold in fp32 only.
        self.folded = (not grad and self.precision == "fp32"
                       and fold_normalization(backbone, preprocess.mean, preprocess.std))
        self.backbone = backbone.to(self.device)
        self._model = torch.compile(self.backbone) if compile else self.backbone
        self.compiled = compile
        table = view_table(recipe)
        self.sizes = sorted({v.size for v in table})
        # forward runs one size at a time; `_order` puts the views back in view-table order.
        by_size = [i for s in self.sizes for i, v in enumerate(table) if v.size == s]
        self._order = None if by_size == list(range(len(table))) else np.argsort(by_size).tolist()
        self._bufs: dict = {}

    @property
    def dim(self) -> int:
        """D, the width of one view's feature."""
        return self.backbone.dim

    @property
    def pool(self) -> str:
        return self.backbone.pool

    def __repr__(self) -> str:
        return (f"Featurizer(views={self.recipe.n_views}, dim={self.dim}, pool={self.pool}, device={self.device}, "
                f"precision={self.precision}, store_dtype={self.store_dtype}, grad={self.grad})")

    # -- the steps

    def views(self, images: list) -> dict:
        """``[3, H, W]`` uint8 tensors (any device) → ``{S: uint8 [B, V_S, 3, S, S]}`` on this device."""
        return build_views([im.to(self.device, non_blocking=True) for im in images], self.recipe)

    def stack(self, per_image: list[dict]) -> dict:
        """Per-image view stacks ``{S: [V_S, 3, S, S]}`` → ``{S: [B, V_S, 3, S, S]}`` (reused buffers)."""
        import torch

        out = {}
        for s in self.sizes:
            parts = [views[s] for views in per_image]
            shape = (len(parts), *parts[0].shape)
            out[s] = torch.stack(parts, out=self._buffer(("u8", s), shape, parts[0].dtype, parts[0].device))
        return out

    def forward(self, views: dict):
        """Views ``{S: uint8 [B, V_S, 3, S, S]}`` → float32 features ``[B, V, D]`` on this device."""
        n = next(iter(views.values())).shape[0] if views else 0
        return self._backoff(n, lambda a, b: self._forward_once({s: v[a:b] for s, v in views.items()}))

    def __call__(self, images: list):
        """``[3, H, W]`` uint8 tensors → float32 features ``[B, V, D]`` on this device."""
        return self._backoff(len(images), lambda a, b: self.forward(self.views(images[a:b])))

    def store(self, features) -> np.ndarray:
        """float32 features (tensor or array) → numpy in the store dtype: the cache's rounding.

        Values beyond the store dtype's range become inf (no warning); callers decide what an
        overflowing image means (the extractor refuses it, a bundle answers the prior).
        """
        if not isinstance(features, np.ndarray):
            features = features.detach().float().cpu().numpy()
        with np.errstate(over="ignore"):
            return features.astype(self.store_dtype)

    def features(self, images: list) -> np.ndarray:
        """``[3, H, W]`` uint8 tensors → features ``[B, V, D]`` in the store dtype (as cached)."""
        return self.store(self(images))

    # -- internals

    def _backoff(self, n: int, step: Callable):
        """THE out-of-memory back-off: `step(start, stop)` over chunks of `batch_size` images;
        on CUDA OOM the same images are retried with half the chunk, and the size is kept."""
        import torch

        outs, start = [], 0
        with torch.inference_mode(not self.grad):
            while start < n:
                stop = min(n, start + self.batch_size)
                try:
                    outs.append(step(start, stop))
                    start = stop
                    continue
                except torch.cuda.OutOfMemoryError:
                    # A nested back-off (a forward inside a call) may have halved the size already.
                    if min(self.batch_size, stop - start) == 1:
                        raise
                # Out of the handler, so the failed step's tensors are already freed.
                self.batch_size = min(self.batch_size, stop - start) // 2
                log.warning("CUDA out of memory: retrying the same images %d per forward", self.batch_size)
                self._bufs.clear()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        if not outs:
            return torch.empty((0, self.recipe.n_views, self.dim), dtype=torch.float32, device=self.device)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _forward_once(self, views: dict):
        """One forward per view side, no back-off; views back in view-table order."""
        import torch

        parts = []
        for s in self.sizes:
            v = views[s].to(self.device, non_blocking=True)
            b, nv = v.shape[:2]
            full = max(b, self.batch_size) if self.compiled else b
            if full > b:  # a compiled backbone recompiles for each new shape: a short batch is padded
                v = torch.cat([v, v.new_zeros((full - b, *v.shape[1:]))])
            parts.append(self._pooled(self._pixels(v.reshape(full * nv, 3, s, s))).reshape(full, nv, -1)[:b])
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return out if self._order is None else out[:, self._order]

    def _pixels(self, views):
        """uint8 views → the backbone's float input (raw 0..255 when the normalisation is folded)."""
        import torch

        if self.folded:  # into a reused buffer: fresh 100 MB tensors cost page faults
            return self._buffer(("f32", views.shape[-1]), views.shape, torch.float32, self.device).copy_(views)
        return normalize(views, self.preprocess.mean, self.preprocess.std)

    def _pooled(self, pixels):
        """The backbone's pooled float32 features ``[N, D]`` of pixels ``[N, 3, S, S]``."""
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self._model(pixels).float()

    def _buffer(self, key, shape, dtype, device):
        """A reusable tensor of at least `shape[0]` rows, viewed as `shape`."""
        import torch

        buf = self._bufs.get(key)
        if buf is None or buf.shape[0] < shape[0] or tuple(buf.shape[1:]) != tuple(shape[1:]):
            buf = self._bufs[key] = torch.empty(tuple(shape), dtype=dtype, device=device)
        return buf[: shape[0]]
