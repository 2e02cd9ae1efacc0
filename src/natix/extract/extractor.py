"""The batched extractor: images → views → backbone → per-view features in the cache.

The loop keeps the model fed: DataLoader workers read, hash-check and decode images (and,
on CPU, also build the views, so the main process only runs the model); on CUDA the decoded
frames are pinned, copied non-blocking, and cut into views on the GPU. A background thread
writes finished chunks so disk I/O never stalls compute. Chunks are fixed slices of the
to-do list, so a resumed run forms the same batches as an uninterrupted one and, on CPU,
writes bitwise-identical features.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from natix.cache.fingerprint import EXTRACTOR_VERSION
from natix.cache.store import CacheWriter, Rows, ensure_writable, resolve_cache_root
from natix.config import PRECISIONS, STORE_DTYPES, Preprocess, RunOptions, ViewRecipe
from natix.data.decode import decode_image
from natix.data.sources import discover, hash_bytes, hash_files
from natix.errors import ConfigError, DecodeError, NatixError
from natix.extract.views import build_views, normalize, view_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What one `extract` call did."""

    cache_file: Path
    fingerprint: str
    images: int  # distinct images in the source
    already_cached: int  # found in the cache file before this run
    resumed: int  # found in finished chunks of an interrupted run
    extracted: int  # run through the model now
    failed: int  # new failures recorded now
    known_failures: int  # skipped because the same bytes failed before
    metadata_updates: int  # cached images whose path/label/group changed
    n_views: int
    dim: int
    seconds: float
    device: str
    precision: str
    batch_size: int  # images per step the run settled on (halved after CUDA OOM)

    @property
    def model_work(self) -> bool:
        return self.extracted > 0

    @property
    def images_per_s(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0


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


def build_identity(backbone_ident: dict, recipe: ViewRecipe, preprocess: Preprocess, *,
                   store_dtype: str, precision: str) -> dict:
    """Everything that changes the features; nothing that only changes speed or paths."""
    return {
        "extractor_version": EXTRACTOR_VERSION,
        "backbone": backbone_ident,
        "views": recipe.identity(),
        "preprocess": preprocess.identity(),
        "store_dtype": store_dtype,
        "precision": precision,
    }


class _Transient(str):
    """A failure of the file, not of its bytes: recorded by path and retried next run."""


def _utf8(path) -> bool:
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _display(path) -> str:
    """A printable form of a path whose bytes are not UTF-8 (b'\\xff' shown as \\xff)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _close_fds(fds, _worker_id=None) -> None:
    """DataLoader workers are forked: drop inherited descriptors (the cache lock) at start."""
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


class _ImageSet:
    """DataLoader dataset: (position, record, id) → decoded image or views, or a failure reason."""

    def __init__(self, items, recipe: ViewRecipe | None):
        self.items = items
        self.recipe = recipe  # set: build uint8 views in the worker (CPU path)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        import torch

        record, image_id = self.items[k]
        try:
            data = Path(record.path).read_bytes()
        except OSError as exc:
            return k, _Transient(f"cannot read file: {exc.strerror or exc}")
        if hash_bytes(data) != image_id:
            return k, _Transient("file changed while extracting: rerun extract")
        try:
            arr = decode_image(data)
        except DecodeError as exc:
            return k, str(exc)
        # [3, H, W] over the HWC array: channels-last strides, which torch's uint8 resize wants
        img = torch.from_numpy(arr).permute(2, 0, 1)
        size = (arr.shape[0], arr.shape[1])
        if self.recipe is not None:
            return k, ({s: v[0] for s, v in build_views([img], self.recipe).items()}, size)
        return k, (img, size)


def _collate(batch):
    return batch


class _Writer:
    """One background thread that makes chunks durable in order; errors resurface in `put`."""

    def __init__(self, writer: CacheWriter, depth: int = 4):
        self.writer = writer
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="natix-writer", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self.writer.add_part(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    self.error = exc

    def put(self, features, rows, failures):
        if self.error is not None:
            raise self.error
        self.q.put((features, rows, failures))

    def close(self):
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def fold_normalization(backbone, mean, std) -> bool:
    """Fold ``(x/255 - mean) / std`` into the patch-embedding convolution, in place.

    The patch embedding is a stride-16, kernel-16, unpadded convolution, hence affine in its
    input, so ``conv(W, (x/255 - m)/s) + b == conv(W / (255 s), x) + b - Σ W·m/s`` exactly in
    real arithmetic. The model then takes raw 0..255 pixels, which saves three passes over
    every view. Returns False (and changes nothing) when the backbone has no such convolution.
    """
    import torch

    inner = backbone.model
    conv = None
    if backbone.kind == "transformers":
        conv = getattr(getattr(inner, "embeddings", None), "patch_embeddings", None)
    else:
        conv = getattr(getattr(inner, "patch_embed", None), "proj", None)
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


class _Forward:
    """Runs the backbone over view batches, halving the micro-batch on CUDA out-of-memory."""

    def __init__(self, backbone, device, precision: str, micro: int):
        self.backbone = backbone
        self.device = device
        self.precision = precision
        self.micro = micro  # views per forward call

    def __call__(self, x):
        import torch

        while True:
            oom = False
            try:
                outs = []
                for s in range(0, x.shape[0], self.micro):
                    with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                        enabled=self.precision == "bf16"):
                        outs.append(self.backbone(x[s:s + self.micro]).float())
                return torch.cat(outs)
            except torch.cuda.OutOfMemoryError:
                if self.micro == 1:
                    raise
                oom = True
            if oom:  # outside the handler, so the failed forward's activations are already freed
                outs = None
                self.micro = max(1, self.micro // 2)
                log.warning("CUDA out of memory: retrying the same images with %d views per forward", self.micro)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


def extract(source, backbone: str, *, recipe: ViewRecipe = ViewRecipe(), preprocess: Preprocess = Preprocess(),
            pool: str = "cls", store_dtype: str = "float16", precision: str = "auto",
            checkpoint: str | None = None, adapter: str | None = None, cache_root=None,
            options: RunOptions = RunOptions(), compile: bool = False,
            retry_failures: bool = False) -> ExtractResult:
    """Extract per-view features of every image in `source` into the fingerprinted cache.

    Only images whose content is not yet in the cache go through the model; an identical
    rerun does no model work. Images that failed to decode are skipped while their bytes are
    unchanged, unless `retry_failures`. Returns what was done. Raises `NatixError` subclasses for
    bad input, before anything is written.
    """
    import torch

    from natix.extract.backbones import load_backbone

    t0 = time.perf_counter()
    if store_dtype not in STORE_DTYPES:
        raise ConfigError(f"unknown store dtype '{store_dtype}': pass one of {', '.join(STORE_DTYPES)}")
    device = resolve_device(options.device)
    precision = resolve_precision(precision, device)
    records = discover(source)
    root = resolve_cache_root(cache_root)
    ensure_writable(root)
    ids = hash_files([r.path for r in records])

    model, bb_ident = load_backbone(backbone, checkpoint=checkpoint, adapter=adapter, pool=pool)
    identity = build_identity(bb_ident, recipe, preprocess, store_dtype=store_dtype, precision=precision)
    table = [{"name": v.name, "box": list(v.box), "flip": v.flip} for v in view_table(recipe)]

    source_info = {"backbone": backbone, "checkpoint": checkpoint, "adapter": adapter}
    with CacheWriter(root, identity, table, dim=model.dim, store_dtype=store_dtype, source=source_info) as writer:
        unreadable, todo, seen = [], [], {}
        already, resumed_ids = 0, 0
        known_fail = 0
        in_file = writer.in_file
        for rec, image_id in zip(records, ids):
            if not _utf8(rec.path):
                unreadable.append(("", _display(rec.path), "file name is not valid UTF-8: rename the file"))
                continue
            if isinstance(image_id, Exception):
                unreadable.append(("", str(rec.path), f"cannot read file: {image_id.strerror or image_id}"))
                continue
            if image_id in seen:
                continue  # the same bytes under a second path: one row, the first path
            seen[image_id] = rec
            label = -1 if rec.label is None else rec.label
            group = rec.group or ""
            if image_id in writer.done_ids:
                if image_id in in_file:
                    already += 1
                else:
                    resumed_ids += 1
                writer.set_metadata(image_id, str(rec.path), label, group)
            elif image_id in writer.failed_ids and not retry_failures:
                known_fail += 1
            else:
                todo.append((rec, image_id))
        metadata_updates = writer.pending_metadata
        # Unreadable files are retried every run; recording the same reason again would only
        # rewrite the cache.
        failed_unreadable = len(unreadable)
        unreadable = [u for u in unreadable if writer.path_failures.get(u[1]) != u[2]]
        if unreadable:
            writer.add_part(np.zeros((0, recipe.n_views, model.dim), dtype=store_dtype),
                            Rows([], [], [], [], []), unreadable)

        extracted, failed, step = 0, failed_unreadable, options.batch_size
        dim = model.dim
        if todo:
            # Folding is exact in real arithmetic; in bf16 the folded bias loses digits, so fold in fp32 only.
            folded = precision == "fp32" and fold_normalization(model, preprocess.mean, preprocess.std)
            model = model.to(device)
            forward = _Forward(torch.compile(model) if compile else model, device, precision,
                               options.batch_size * recipe.n_views)
            extracted, new_failed, step = _run(todo, forward, writer, recipe, preprocess, device, options,
                                               store_dtype, dim, folded, lock_fd=writer.lock_fd)
            failed += new_failed
        if writer.needs_commit():
            writer.commit()
    return ExtractResult(
        cache_file=writer.path, fingerprint=writer.fingerprint, images=len(seen) + len(unreadable),
        already_cached=already, resumed=resumed_ids, extracted=extracted, failed=failed,
        known_failures=known_fail, metadata_updates=metadata_updates, n_views=recipe.n_views,
        dim=dim, seconds=time.perf_counter() - t0,
        device=str(device), precision=precision,
        batch_size=step,
    )


def _run(todo, forward, writer: CacheWriter, recipe: ViewRecipe, preprocess: Preprocess, device,
         options: RunOptions, store_dtype: str, model_dim: int, folded: bool,
         lock_fd: int | None = None) -> tuple[int, int, int]:
    """The model loop over fixed chunks of `todo`; returns (extracted, failed, images per step)."""
    import functools

    import torch
    from torch.utils.data import DataLoader

    on_cpu = device.type == "cpu"
    loader = DataLoader(_ImageSet(todo, recipe if on_cpu else None), batch_size=options.batch_size,
                        shuffle=False, num_workers=options.workers, collate_fn=_collate,
                        worker_init_fn=functools.partial(_close_fds, [lock_fd]) if options.workers else None,
                        pin_memory=not on_cpu, persistent_workers=False,
                        prefetch_factor=4 if options.workers else None)
    table = view_table(recipe)
    sizes = sorted({v.size for v in table})
    slots = {s: [i for i, v in enumerate(table) if v.size == s] for s in sizes}
    bar = _progress(len(todo), options.progress)
    threads = torch.get_num_threads()
    if on_cpu and options.workers:
        # Workers decode on their own cores; more model threads would only contend with them.
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - options.workers)))
    out_writer = _Writer(writer)
    bufs: dict = {}
    step = options.batch_size

    def compute(items) -> np.ndarray:
        """Features ``[n, V, D]`` (float32) of decoded items."""
        out = np.empty((len(items), recipe.n_views, model_dim), dtype=np.float32)
        if on_cpu:
            views = {s: _stack_into(bufs, ("u8", s), [item[0][s] for _, item in items]) for s in sizes}
        else:
            views = build_views([item[0].to(device, non_blocking=True) for _, item in items], recipe)
        for s in sizes:
            v = views[s].to(device, non_blocking=True)
            b, nv = v.shape[:2]
            v = v.reshape(b * nv, 3, s, s)
            if folded:  # into a reused buffer: fresh 100 MB tensors cost page faults
                x = _buffer(bufs, ("f32", s), v.shape, torch.float32, device).copy_(v)
            else:
                x = normalize(v, preprocess.mean, preprocess.std)
            out[:, slots[s]] = forward(x).reshape(b, nv, -1).cpu().numpy()
        return out

    extracted = failed = 0
    try:
        with torch.inference_mode():
            for batch in loader:
                good = [(k, item) for k, item in batch if not isinstance(item, str)]
                failures = [("" if isinstance(item, _Transient) else todo[k][1], str(todo[k][0].path), str(item))
                            for k, item in batch if isinstance(item, str)]
                feats = np.zeros((len(good), recipe.n_views, model_dim), dtype=store_dtype)
                start = 0
                while start < len(good):  # sub-steps of `step` images; halved on CUDA OOM
                    part = good[start:start + step]
                    oom = False
                    try:
                        feats[start:start + len(part)] = compute(part)
                        start += len(part)
                    except torch.cuda.OutOfMemoryError:
                        if step == 1:
                            raise
                        oom = True
                    if oom:  # outside the handler, so the failed step's tensors are already freed
                        step = max(1, step // 2)
                        log.warning("CUDA out of memory: retrying the same images %d per step", step)
                        bufs.clear()
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                if not np.isfinite(feats).all():
                    raise NatixError(f"features overflow {store_dtype} (inf/NaN) for images such as "
                                     f"{todo[good[0][0]][0].path}: rerun with --store-dtype float32")
                rows = Rows(ids=[todo[k][1] for k, _ in good], paths=[str(todo[k][0].path) for k, _ in good],
                            labels=[-1 if todo[k][0].label is None else todo[k][0].label for k, _ in good],
                            groups=[todo[k][0].group or "" for k, _ in good],
                            sizes=[item[1] for _, item in good])
                out_writer.put(feats, rows, failures)
                extracted += len(good)
                failed += len(failures)
                bar.update(len(batch))
    finally:
        torch.set_num_threads(threads)
        bar.close()
        out_writer.close()
    return extracted, failed, max(1, min(step, forward.micro // recipe.n_views))


def _buffer(bufs: dict, key, shape, dtype, device):
    """A reusable tensor of at least `shape[0]` rows, viewed as `shape`."""
    import torch

    buf = bufs.get(key)
    if buf is None or buf.shape[0] < shape[0] or tuple(buf.shape[1:]) != tuple(shape[1:]):
        buf = bufs[key] = torch.empty(tuple(shape), dtype=dtype, device=device)
    return buf[: shape[0]]


def _stack_into(bufs: dict, key, tensors):
    """`torch.stack` into a reusable buffer."""
    import torch

    out = _buffer(bufs, key, (len(tensors),) + tuple(tensors[0].shape), tensors[0].dtype, tensors[0].device)
    return torch.stack(tensors, out=out)


def _progress(total: int, enabled: bool):
    """A tqdm bar in images/s on a terminal; a no-op otherwise."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="extract", disable=not enabled or not sys.stderr.isatty(),
                dynamic_ncols=True, smoothing=0.1)

