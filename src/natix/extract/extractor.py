"""The batched extractor: images → views → backbone → per-view features in the cache.

The features come from the one :class:`natix.extract.Featurizer` (which bundles also use, so
what is served is what was cached). The loop keeps the model fed: DataLoader workers read,
hash-check and decode images (and, on CPU, also build the views with the featurizer's view
step, so the main process only runs the model); on CUDA the decoded frames are pinned,
copied non-blocking, and cut into views on the GPU. A background thread
writes finished chunks so disk I/O never stalls compute. Chunks are fixed slices of the
to-do list, so a resumed run forms the same batches as an uninterrupted one and, on CPU,
writes bitwise-identical features.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from natix.cache.fingerprint import EXTRACTOR_VERSION
from natix.cache.layout import row_id
from natix.cache.store import CacheWriter, Rows, ensure_writable, resolve_cache_root
from natix.config import Preprocess, RunOptions, ViewRecipe
from natix.data.decode import decode_image, read_image
from natix.data.hashmemo import save_memo
from natix.data.sources import discover, hash_bytes, hash_files
from natix.distributed import Job
from natix.errors import ConfigError, DataError, DecodeError, NatixError
from natix.extract.featurizer import (
    Featurizer,
    as_chw,
    check_store_dtype,
    resolve_device,
    resolve_precision,
)
from natix.extract.ranks import JobProgress, check_job, chunks, file_ids, gather_stats, my_chunks, open_writer
from natix.extract.views import build_views, view_table
from natix.progress import Progress, say

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
    verified: bool = True  # the cache's features were checked against their checksum (read or merged)
    conflicts: int = 0  # images the source lists with conflicting labels (held out of every split)
    repaired: tuple[str, ...] = ()  # damaged parts of the cache rewritten from the source (see natix.cache.checksum)
    challenge: str = "clean"  # the challenge recipe each image went through (natix.data.challenge)
    draws: int = 1  # challenge draws per image: rows per image in the cache
    rank: int = 0  # this process's rank in a torchrun job (0 in a plain process)
    ranks: tuple[dict, ...] = ()  # a torchrun job's per-rank stats (natix.extract.ranks.RankStats.to_json)
    files_read: int = 0  # source files hashed now (content ids)
    files_reused: int = 0  # source files whose id came from the hash memo (size, mtime, inode unchanged)

    @property
    def model_work(self) -> bool:
        return self.extracted > 0

    @property
    def images_per_s(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0


def build_identity(backbone_ident: dict, recipe: ViewRecipe, preprocess: Preprocess, *,
                   store_dtype: str, precision: str, challenge: Challenge | None = None) -> dict:
    """Everything that changes the features; nothing that only changes speed or paths.

    A challenge cache adds its challenge recipe and number of draws; a clean cache's identity
    (and so its fingerprint) is what it was before challenges existed.
    """
    identity = {
        "extractor_version": EXTRACTOR_VERSION,
        "backbone": backbone_ident,
        "views": recipe.identity(),
        "preprocess": preprocess.identity(),
        "store_dtype": store_dtype,
        "precision": precision,
    }
    if challenge is not None:
        identity["challenge"] = {**challenge.recipe.identity(), "draws": challenge.draws}
    return identity


@dataclass(frozen=True)
class Challenge:
    """What a challenge cache runs every image through before its views: `draws` draws of `recipe`."""

    recipe: object  # a natix.data.challenge recipe (picklable: DataLoader workers receive it)
    draws: int

    def images(self, arr: np.ndarray, image_id: str) -> list[tuple[np.ndarray, str]]:
        """Each draw's challenge image of the decoded image `arr`, with the row's draw record (JSON)."""
        out = []
        for d in range(self.draws):
            params = self.recipe.params(arr.shape[:2], image_id, d)
            record = {"draw": d, "source_size": [int(arr.shape[0]), int(arr.shape[1])], "params": params}
            out.append((self.recipe.apply(arr, params), json.dumps(record, sort_keys=True)))
        return out


def challenge_for(name: str, draws: int, seed: int) -> Challenge | None:
    """The challenge of `name` (None for "clean", which extracts the images themselves)."""
    from natix.data.challenge import challenge_recipe

    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws must be a positive integer, got {draws!r}: pass e.g. --draws 4")
    recipe = challenge_recipe(name, seed=seed)
    if name == "clean":
        for option, value, default in (("--draws", draws, 1), ("--seed", seed, 0)):
            if value != default:
                raise ConfigError(f"{option} {value} needs a challenge recipe: pass --challenge validator-e1 (clean "
                                  "extracts each image once, with no randomness)")
        return None
    if draws > 1 and recipe.params((64, 64), "", 0) == recipe.params((64, 64), "", 1):
        raise ConfigError(f"challenge {name} draws nothing at random, so its draws would be identical rows: pass "
                          "--draws 1")
    return Challenge(recipe, draws)


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
    """DataLoader dataset: position → the decoded image's entries, or a failure reason.

    An entry is (image or views, size, draw record or None): one per image, or one per draw of
    a challenge.
    """

    def __init__(self, items, recipe: ViewRecipe | None, challenge: Challenge | None = None):
        self.items = items
        # Set: build the uint8 views in the worker (CPU path), with the featurizer's view builder.
        # Only the recipes go to the workers: under spawn/forkserver a worker gets a pickled copy.
        self.recipe = recipe
        self.challenge = challenge

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        record, image_id = self.items[k]
        try:
            data = read_image(record.path)
        except OSError as exc:
            return k, _Transient(f"cannot read file: {exc.strerror or exc}")
        except DecodeError as exc:  # larger than any image within the pixel limit
            return k, str(exc)
        if hash_bytes(data) != image_id:
            return k, _Transient("file changed while extracting: rerun extract")
        try:
            arr = decode_image(data)
        except DecodeError as exc:
            return k, str(exc)
        try:
            images = [(arr, None)] if self.challenge is None else self.challenge.images(arr, image_id)
        except (DecodeError, DataError) as exc:  # e.g. a frame too thin to letterbox: a failure of this image
            return k, f"challenge {self.challenge.recipe.name} cannot transform it: {exc}"
        return k, [self._entry(a, record) for a, record in images]

    def _entry(self, arr: np.ndarray, record: str | None):
        img = as_chw(arr)
        size = (arr.shape[0], arr.shape[1])
        if self.recipe is not None:
            return {s: v[0] for s, v in build_views([img], self.recipe).items()}, size, record
        return img, size, record


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

    def put(self, features, rows, failures, seq: int):
        if self.error is not None:
            raise self.error
        self.q.put((features, rows, failures, seq))

    def close(self):
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


@dataclass
class _Plan:
    """What an extract call finds in the source against the cache."""

    todo: list = field(default_factory=list)  # (record, id) to run through the model
    unreadable: list = field(default_factory=list)  # (id, path, reason) of files that cannot be read
    seen: dict = field(default_factory=dict)  # id → first record with those bytes
    also: dict = field(default_factory=dict)  # id → later records with the same bytes
    already: int = 0
    resumed: int = 0
    known_failures: int = 0


def _plan(records, ids, writer: CacheWriter, retry_failures: bool, draws: int | None = None) -> _Plan:
    """Sort the source into cached, resumed, known failures, unreadable files and work to do;
    cached images get their current path/label/group. With `draws` (a challenge cache) an image
    is done when all its draws are."""
    plan = _Plan()

    def done(image_id: str) -> bool:
        if draws is None:
            return image_id in writer.done_ids
        return all(row_id(image_id, d) in writer.done_ids for d in range(draws))

    for rec, image_id in zip(records, ids):
        if not _utf8(rec.path):
            plan.unreadable.append(("", _display(rec.path), "file name is not valid UTF-8: rename the file"))
        elif isinstance(image_id, Exception):
            plan.unreadable.append(("", str(rec.path), f"cannot read file: {image_id.strerror or image_id}"))
        elif image_id in plan.seen:
            plan.also.setdefault(image_id, []).append(rec)  # the same bytes again: one row, the first path
        elif done(image_id):
            plan.seen[image_id] = rec
            if image_id in writer.in_file:
                plan.already += 1
            else:
                plan.resumed += 1
            writer.set_metadata(image_id, str(rec.path), _label(rec), rec.group or "")
        else:
            plan.seen[image_id] = rec
            if image_id in writer.failed_ids and not retry_failures:
                plan.known_failures += 1
            else:
                plan.todo.append((rec, image_id))
    return plan


def _conflicts(plan: _Plan) -> dict[str, list[tuple[str, int]]]:
    """Images whose identical bytes the source lists with different known labels: id → (path, label) listings."""
    out = {}
    for image_id, later in plan.also.items():
        listings = [(str(r.path), _label(r)) for r in [plan.seen[image_id], *later]]
        if len({label for _, label in listings if label >= 0}) > 1:
            out[image_id] = listings
    return out


def _warn_conflicts(conflicts: dict[str, list[tuple[str, int]]]) -> None:
    """Say once per run that some images are listed with conflicting labels, with an example."""
    if conflicts:
        listings = next(iter(conflicts.values()))
        example = " and ".join(f"{p} (label {x})" for p, x in listings[:2])
        log.warning("%d image(s) are listed with conflicting labels (e.g. %s hold the same bytes): recorded in the "
                    "cache and held out of every split; fix their labels in the source and rerun (natix cache info "
                    "lists them)", len(conflicts), example)


def _label(rec) -> int:
    return -1 if rec.label is None else rec.label


def _record_unreadable(writer: CacheWriter, unreadable: list, n_views: int, dim: int, store_dtype: str) -> None:
    """Record unreadable files, except those already recorded with the same reason (they are
    retried every run, and recording the same reason again would only rewrite the cache)."""
    new = [u for u in unreadable if writer.path_failures.get(u[1]) != u[2]]
    if new:
        writer.add_part(np.zeros((0, n_views, dim), dtype=store_dtype), Rows([], [], [], [], []), new)


def extract(source, backbone: str, *, recipe: ViewRecipe | None = None, preprocess: Preprocess = Preprocess(),
            pool: str = "cls", store_dtype: str = "float16", precision: str = "auto",
            checkpoint: str | None = None, adapter: str | None = None, cache_root=None,
            options: RunOptions = RunOptions(), compile: bool = False,
            retry_failures: bool = False, verify: bool = True, allow_outside: bool = False,
            challenge: str = "clean", draws: int = 1, challenge_seed: int = 0, rehash: bool = False) -> ExtractResult:
    """Extract per-view features of every image in `source` into the fingerprinted cache.

    With a `challenge` recipe other than "clean" (see :func:`natix.data.challenge_recipe`), each
    image is first turned into `draws` challenge images (draw d of image i is fixed by i, d and
    `challenge_seed`), whose views are extracted as rows ``"<image id>:<d>"`` with their draw
    records; the recipe, its seed and `draws` are part of the cache identity. `recipe` defaults to
    the 10-view recipe, and under a challenge (224×224 images already) to the single global view.

    Only images whose content is not yet in the cache go through the model; an identical
    rerun does no model work, and reads no file whose size, mtime and inode are unchanged since
    it was last hashed (see :mod:`natix.data.hashmemo`; `rehash` reads every file). Images that
    failed to decode are skipped while their bytes are unchanged, unless `retry_failures`. The cache file is checked before any work: labels,
    paths and groups the source lists and the view table are repaired, other damage raises; a
    run that would not rewrite the cache also checks its features checksum, unless `verify` is
    False. Manifest paths outside the manifest's folder are refused unless `allow_outside`.
    Under ``torchrun`` every rank takes a share of the work and rank 0 merges
    (:mod:`natix.extract.ranks`); the result is the same file one process writes. Returns what
    was done. Raises `NatixError` subclasses for bad input, before anything is written.
    """
    import torch  # noqa: F401 - loaded before the clock starts, as the speed reported is the work's

    from natix.distributed import join, leave

    t0 = time.perf_counter()
    check_store_dtype(store_dtype)
    chal = challenge_for(challenge, draws, challenge_seed)
    if recipe is None:
        recipe = ViewRecipe() if chal is None else ViewRecipe(n_views=1)
    job = join(options.device)  # a world of one outside torchrun
    try:
        return _extract(job, t0, source, backbone, recipe, preprocess, pool, store_dtype, precision, checkpoint,
                        adapter, cache_root, options, compile, retry_failures, verify, allow_outside, chal, rehash)
    finally:
        leave(job)


def _extract(job: Job, t0: float, source, backbone, recipe, preprocess, pool, store_dtype, precision, checkpoint,
             adapter, cache_root, options: RunOptions, compile, retry_failures, verify, allow_outside,
             chal: Challenge | None, rehash: bool) -> ExtractResult:
    """The steps of :func:`extract` on one rank of the job (all of them in a plain process)."""
    from natix.extract.backbones import load_backbone

    device = resolve_device(job.device)
    precision = resolve_precision(precision, device)
    records = discover(source, allow_outside=allow_outside)
    root = resolve_cache_root(cache_root)
    if job.main and not root.is_dir():
        ensure_writable(root)  # a new folder: refuse before loading the backbone (an existing one may be read-only)
    hashed, memo = file_ids(job, [r.path for r in records], root, hash_files, rehash=rehash)
    ids = hashed.ids

    if job.main:
        say(f"loading backbone {backbone}" + (f" with adapter {adapter}" if adapter else ""))
    model, bb_ident = load_backbone(backbone, checkpoint=checkpoint, adapter=adapter, pool=pool)
    identity = build_identity(bb_ident, recipe, preprocess, store_dtype=store_dtype, precision=precision,
                              challenge=chal)
    table = [{"name": v.name, "box": list(v.box), "flip": v.flip} for v in view_table(recipe)]
    source_info = {"backbone": backbone, "checkpoint": checkpoint, "adapter": adapter}
    with open_writer(job, root, identity, table, dim=model.dim, store_dtype=store_dtype, source=source_info) as writer:
        check_job(job, writer.path, writer.fingerprint)
        if memo is not None and hashed.read and writer.read_only is None:
            save_memo(root, memo)
        plan = _plan(records, ids, writer, retry_failures, chal.draws if chal is not None else None)
        conflicts = _conflicts(plan)
        writer.set_conflicts(plan.seen, conflicts)
        repaired: tuple[str, ...] = ()
        if job.main:  # rank 0 checks, repairs and merges; the others only add parts
            _warn_conflicts(conflicts)
            repaired = tuple(writer.audit(checksum=verify and not plan.todo))
            if repaired:
                log.warning("cache %s: repairing its damaged %s from the image source and the view recipe",
                            writer.path, " and ".join(repaired))
            _record_unreadable(writer, plan.unreadable, recipe.n_views, model.dim, store_dtype)
        metadata_updates = writer.pending_metadata
        base = job.broadcast(writer.next_part)  # chunk c of this run becomes part base + c on every rank
        work = _Work(model, recipe, preprocess, device, precision, store_dtype, compile, chal)
        extracted, failed, step, stats = work.run(job, plan.todo, base, writer, options)
        verified = verify or writer.needs_commit()  # a merge checks the old features as it copies them
        if job.main:
            writer.absorb_new_parts()
            if not (verified or writer.needs_commit()):
                log.warning("not verifying the features checksum of %s (verify=False): its tables were checked",
                            writer.path)
            if writer.needs_commit():
                writer.commit()
        job.barrier()  # every rank returns once the merged cache is in place
    return ExtractResult(
        cache_file=writer.path, fingerprint=writer.fingerprint, images=len(plan.seen) + len(plan.unreadable),
        already_cached=plan.already, resumed=plan.resumed, extracted=extracted,
        failed=failed + len(plan.unreadable), known_failures=plan.known_failures,
        metadata_updates=metadata_updates, n_views=recipe.n_views, dim=model.dim,
        seconds=time.perf_counter() - t0, device=str(device), precision=precision, batch_size=step,
        verified=verified or writer.needs_commit(), repaired=repaired, conflicts=len(conflicts),
        challenge=chal.recipe.name if chal is not None else "clean", draws=chal.draws if chal is not None else 1,
        rank=job.rank, ranks=tuple(s.to_json() for s in stats) if job.world > 1 else (),
        files_read=hashed.read, files_reused=hashed.reused,
    )


@dataclass(frozen=True)
class _Work:
    """What the model loop needs to build the featurizer, when there is work."""

    model: object
    recipe: ViewRecipe
    preprocess: Preprocess
    device: object
    precision: str
    store_dtype: str
    compile: bool
    challenge: Challenge | None

    def run(self, job: Job, todo: list, base: int, writer: CacheWriter,
            options: RunOptions) -> tuple[int, int, int, list]:
        """This rank's chunks of `todo` through the model into parts ``base + chunk``; (extracted,
        failed, batch size settled on, every rank's stats) once every rank is done."""
        parts = chunks(len(todo), options.batch_size)
        mine = my_chunks(len(todo), options.batch_size, job)
        items = [todo[k] for c in mine for k in parts[c]]
        extracted = failed = 0
        step, seconds = options.batch_size, 0.0
        bar = Progress(len(todo), "extract", "img", enabled=options.progress and job.main and bool(todo))
        if job.world > 1 and job.main:
            bar = JobProgress(bar, writer.path, base, [len(c) for c in parts])
        try:
            if items:
                writer.require_writable()
                featurizer = Featurizer(self.model, self.recipe, self.preprocess, device=self.device,
                                        precision=self.precision, store_dtype=self.store_dtype,
                                        batch_size=options.batch_size, compile=self.compile)
                t = time.perf_counter()
                extracted, failed = _run(items, featurizer, writer, options, self.challenge,
                                         [base + c for c in mine], bar)
                step, seconds = featurizer.batch_size, time.perf_counter() - t
            job.barrier()  # every rank's parts are written
        finally:
            bar.close()
        stats = gather_stats(job, str(self.device), extracted, failed, seconds)
        return sum(s.extracted for s in stats), sum(s.failed for s in stats), step, stats


def _run(todo, featurizer: Featurizer, writer: CacheWriter, options: RunOptions, challenge: Challenge | None,
         seqs: list[int], bar) -> tuple[int, int]:
    """The model loop over fixed chunks of `todo` (batch b becomes part ``seqs[b]``); returns
    (extracted, failed) images."""
    import torch

    on_cpu = featurizer.device.type == "cpu"
    loader = _loader(todo, featurizer, options, writer.lock_fd, challenge)
    threads = torch.get_num_threads()
    if on_cpu and options.workers:
        # Workers decode on their own cores; more model threads would only contend with them.
        torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - options.workers)))
    out_writer = _Writer(writer)
    extracted = failed = 0
    try:
        for b, batch in enumerate(loader):
            good = [(k, item) for k, item in batch if not isinstance(item, str)]
            failures = [("" if isinstance(item, _Transient) else todo[k][1], str(todo[k][0].path), str(item))
                        for k, item in batch if isinstance(item, str)]
            feats = _batch_features(featurizer, [e[0] for _, item in good for e in item], on_cpu)
            if not np.isfinite(feats).all():
                raise NatixError(f"features overflow {featurizer.store_dtype} (inf/NaN) for images such as "
                                 f"{todo[good[0][0]][0].path}: rerun with --store-dtype float32")
            out_writer.put(feats, _rows(todo, good), failures, seqs[b])
            extracted += len(good)
            failed += len(failures)
            bar.update(len(batch))
    finally:
        torch.set_num_threads(threads)
        out_writer.close()
    return extracted, failed


def _loader(todo, featurizer: Featurizer, options: RunOptions, lock_fd: int | None, challenge: Challenge | None):
    """A DataLoader over `todo` in fixed chunks of `batch_size` images; workers make the challenge
    draws and, on CPU, build the views."""
    import functools

    from torch.utils.data import DataLoader

    on_cpu = featurizer.device.type == "cpu"
    return DataLoader(_ImageSet(todo, featurizer.recipe if on_cpu else None, challenge), batch_size=options.batch_size,
                      shuffle=False, num_workers=options.workers, collate_fn=_collate,
                      worker_init_fn=functools.partial(_close_fds, [lock_fd]) if options.workers else None,
                      pin_memory=not on_cpu, persistent_workers=False,
                      prefetch_factor=4 if options.workers else None)


def _batch_features(featurizer: Featurizer, items: list, on_cpu: bool) -> np.ndarray:
    """Store-dtype features ``[n, V, D]`` of decoded items: view stacks (CPU) or images (GPU)."""
    if not items:
        return np.zeros((0, featurizer.recipe.n_views, featurizer.dim), dtype=featurizer.store_dtype)
    if on_cpu:
        return featurizer.store(featurizer.forward(featurizer.stack(items)))
    return featurizer.features(items)


def _rows(todo, good) -> Rows:
    """The cache rows of the decoded items `good` ((position in `todo`, entries)): one per entry,
    each draw of a challenge a row ``"<image id>:<draw>"`` with its record."""
    entries = [(todo[k], e) for k, item in good for e in item]
    records = [e[2] for _, e in entries]
    challenge = None if not records or records[0] is None else records
    ids = [i if r is None else row_id(i, json.loads(r)["draw"]) for (_, i), (_, _, r) in entries]
    return Rows(ids=ids, paths=[str(rec.path) for (rec, _), _ in entries],
                labels=[_label(rec) for (rec, _), _ in entries], groups=[rec.group or "" for (rec, _), _ in entries],
                sizes=[e[1] for _, e in entries], challenge=challenge)


