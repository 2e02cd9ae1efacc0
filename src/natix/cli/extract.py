"""Tier-1 commands: `extract`, `cache ls|info|verify`, and the demo helpers `demo-data` and
`demo-backbone`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from natix.cli.common import (
    CHALLENGE,
    COUNT,
    SEED,
    Number,
    echo_json,
    echo_result,
    json_option,
    names_in,
    quiet_transformers,
)
from natix.cli.group import Interrupted, cli, library_errors

CACHE_HELP = "Cache directory  [default: $NATIX_CACHE, else ./.natix-cache]"


# --------------------------------------------------------------------------- demo helpers


@cli.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--n", type=COUNT, default=200, show_default=True, help="Number of images.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Random seed (same seed, same bytes).")
@click.option("--object-scale", type=Number(min=0, max=8, min_open=True), default=1.0, show_default=True,
              help="Multiplies every object's height (1: 3-8 % of the image height).")
@click.option("--hard-negatives", type=Number(min=0, max=1), default=0.5, show_default=True,
              help="Share of negatives with orange objects that are not roadwork (0: orange is a perfect cue).")
@library_errors
def demo_data(out: str, n: int, seed: int, object_scale: float, hard_negatives: float) -> None:
    """Write a synthetic street-scene image set with labels.csv into OUT."""
    from natix.data.demo import make_demo_images

    csv = make_demo_images(out, n=n, seed=seed, object_scale=object_scale, hard_negatives=hard_negatives)
    click.echo(f"wrote {n} images and {csv}")


@cli.command("demo-backbone")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--hidden-size", type=COUNT, default=32, show_default=True)
@click.option("--layers", type=COUNT, default=2, show_default=True)
@library_errors
def demo_backbone(out: str, seed: int, hidden_size: int, layers: int) -> None:
    """Save a tiny randomly initialised DINOv3 ViT to OUT (for demos and tests)."""
    from natix.extract.backbones import save_tiny_dinov3

    quiet_transformers()
    path = save_tiny_dinov3(out, seed=seed, hidden_size=hidden_size, layers=layers)
    click.echo(f"saved a random DINOv3 ViT (hidden {hidden_size}, {layers} layers, 4 registers) to {path}")


# --------------------------------------------------------------------------- extract


# What `natix extract` restores of a damaged cache, by part (see natix.cache.checksum.PARTS).
REPAIRED = {"labels": "labels, paths and groups from the image source", "views": "the view table from the recipe",
            "failures": "the failure list (failed images are tried again)"}


def extract_summary(r: dict) -> str:
    """The lines `natix extract` prints for an `ExtractResult`'s values."""
    lines = [f"cache     {r['cache_file']}  (fingerprint {r['fingerprint'][:16]})",
             f"images    {r['images']} in source: {r['already_cached']} already cached, {r['resumed']} resumed from "
             f"an interrupted run, {r['extracted']} extracted, {r['failed']} failed, {r['known_failures']} known "
             "failures"]
    if r.get("files_reused"):
        lines.append(f"hashes    {r['files_reused']} files unchanged (size, mtime, inode): not read again; "
                     f"{r['files_read']} read (--rehash reads every file)")
    if r["challenge"] != "clean":
        lines.append(f"challenge {r['challenge']}: {r['draws']} draw(s) per image, one cache row each")
    if r["metadata_updates"]:
        lines.append(f"metadata  {r['metadata_updates']} cached images got a new path/label/group")
    if r["conflicts"]:
        lines.append(f"conflicts {r['conflicts']} images listed with conflicting labels: held out of every split "
                     "(natix cache info lists them)")
    if r["repaired"]:
        lines.append(f"repaired  {' and '.join(REPAIRED[p] for p in r['repaired'])} (the cache was damaged)")
    if r["model_work"]:
        lines.append(f"speed     {r['images_per_s']:.1f} images/s, "
                     f"{r['images_per_s'] * r['n_views'] * r['draws']:.0f} views/s "
                     f"on {r['device']} ({r['precision']}, batch {r['batch_size']}); {r['seconds']:.1f} s in all")
    else:
        checked = "checksum verified" if r["verified"] else "checksum not verified (--skip-checksum)"
        lines.append(f"no model work: every image is already in the cache, {checked} ({r['seconds']:.1f} s)")
    for rank in r.get("ranks") or ():
        lines.append(f"rank {rank['rank']:<4} {rank['extracted']} images in {rank['seconds']:.1f} s "
                     f"({rank['images_per_s']:.1f} images/s) on {rank['host']} {rank['device']}")
    if r.get("ranks"):
        lines.append(f"job       {len(r['ranks'])} ranks: {r['extracted']} images, {r['images_per_s']:.1f} images/s "
                     "in all (wall clock, hashing and merge included)")
    lines.append(f"features  [N, {r['n_views']}, {r['dim']}]")
    return "\n".join(lines)


@cli.command()
@click.argument("data", type=click.Path())
@click.option("--backbone", required=True,
              help="Hub id, local directory (save_pretrained), or timm:<model>.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Weights file for a timm:<model> backbone.")
@click.option("--adapter", type=click.Path(file_okay=False), help="PEFT LoRA/DoRA adapter directory (merged).")
@click.option("--views", type=COUNT, default=None,
              help="1 (global), 10 (+tiles), 20 (+flips)  [default: 10; 1 with --challenge]")
@click.option("--grid", type=COUNT, default=3, show_default=True, help="Tiles per side.")
@click.option("--overlap", type=Number(min=0, max=1, max_open=True), default=0.125, show_default=True, help="Tile overlap fraction in [0, 1).")
@click.option("--view-size", type=COUNT, default=224, show_default=True, help="Global view side (multiple of 16).")
@click.option("--tile-size", type=COUNT, default=None, help="Tile side (multiple of 16)  [default: view size]")
@click.option("--pool", type=names_in("natix.config", "POOLS"), default="cls", show_default=True)
@click.option("--store-dtype", type=names_in("natix.config", "STORE_DTYPES"), default="float16", show_default=True)
@click.option("--precision", type=names_in("natix.config", "PRECISIONS"), default="auto", show_default=True,
              help="auto: bf16 autocast on CUDA, fp32 on CPU (part of the cache identity).")
@click.option("--challenge", type=CHALLENGE, default="clean", show_default=True,
              help="Challenge recipe each image goes through first.")
@click.option("--draws", type=COUNT, default=1, show_default=True, help="Challenge draws per image (rows per image).")
@click.option("--seed", "challenge_seed", type=SEED, default=0, show_default=True,
              help="Challenge seed: draw d of an image is fixed by the image, d and this seed.")
@click.option("--cache", "cache_root", type=click.Path(file_okay=False), help=CACHE_HELP)
@click.option("--batch-size", type=COUNT, default=32, show_default=True, help="Images per model step.")
@click.option("--workers", type=Number(min=0, max=256, integer=True), default=2, show_default=True, help="Decoding processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the backbone (CUDA).")
@click.option("--retry-failures", is_flag=True, help="Decode again images that failed before.")
@click.option("--rehash", is_flag=True, help="Read every file to hash it, even those whose size, mtime and inode "
              "are unchanged since the last run.")
@click.option("--skip-checksum", is_flag=True,
              help="When nothing is extracted, do not re-read the features to check their checksum (huge caches); "
                   "the tables are still checked.")
@click.option("--allow-outside", is_flag=True,
              help="Let a manifest name images outside its folder (for a manifest you trust).")
@json_option
@library_errors
def extract(data, backbone, checkpoint, adapter, views, grid, overlap, view_size, tile_size, pool, store_dtype,
            precision, challenge, draws, challenge_seed, cache_root, batch_size, workers, device, compile_,
            retry_failures, rehash, skip_checksum, allow_outside, as_json) -> None:
    """Extract per-view features of every image in DATA (folder or CSV/JSONL manifest)."""
    from natix.config import RunOptions, ViewRecipe
    from natix.extract.extractor import extract as run_extract

    recipe = ViewRecipe(n_views=views or (10 if challenge == "clean" else 1), grid=grid, overlap=overlap, view_size=view_size,
                        tile_size=tile_size or view_size)
    options = RunOptions(batch_size=batch_size, workers=workers, device=device)
    quiet_transformers()
    started = time.time()
    try:
        r = run_extract(data, backbone, recipe=recipe, pool=pool, store_dtype=store_dtype, precision=precision,
                        checkpoint=checkpoint, adapter=adapter, cache_root=cache_root, options=options,
                        compile=compile_, retry_failures=retry_failures, verify=not skip_checksum,
                        allow_outside=allow_outside, challenge=challenge, draws=draws,
                        challenge_seed=challenge_seed, rehash=rehash)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_extract(cache_root, started)) from None
    if r.rank == 0:  # in a torchrun job rank 0 reports for every rank
        echo_result(as_json, {**vars(r), "images_per_s": r.images_per_s, "model_work": r.model_work}, extract_summary)


def interrupted_extract(cache_root, started: float) -> str:
    """The line for an extraction stopped by Ctrl-C: how many images the finished chunks keep.

    The caches this run wrote are those whose writer lock it took (the lock file changes when taken
    and when let go); their chunks not merged yet are what a rerun resumes from.
    """
    from natix.cache.layout import image_ids, pending_parts
    from natix.cache.parts import read_part
    from natix.cache.store import resolve_cache_root
    from natix.errors import CacheError

    root = resolve_cache_root(cache_root)
    # Slack for file systems that keep modification times in whole (or even) seconds.
    written = sorted(lock.with_suffix("") for lock in root.glob("*.h5.lock") if lock.stat().st_mtime >= started - 2)
    kept: set[str] = set()
    for cache_file in written:
        for part in pending_parts(cache_file):
            try:
                kept.update(image_ids(read_part(part, features=False)["ids"]).tolist())
            except CacheError:  # a damaged chunk is extracted again by the rerun
                continue
    where = f" in finished chunks of {', '.join(str(c) for c in written)}" if kept else ""
    return f"rerun the same command to resume ({len(kept)} images kept{where})"


# --------------------------------------------------------------------------- cache


@cli.group()
def cache() -> None:
    """Inspect feature caches."""


def cache_table(rows: list[dict]) -> str:
    """`natix cache ls` as a table: one line per cache file (unreadable ones say why)."""
    lines = [f"{'file':<22} {'images':>7} {'views':>5} {'dim':>5} {'MB':>8}  backbone / note"]
    for r in rows:
        name = Path(r["path"]).name
        if "error" in r:
            lines.append(f"{name:<22} {'?':>7} {'?':>5} {'?':>5} {'?':>8}  UNREADABLE: {r['error']}")
            continue
        note = f"  ({r['pending_parts']} unmerged chunks)" if r["pending_parts"] else ""
        if r.get("challenge"):
            note += f"  [challenge {r['challenge']}: rows are draws]"
        lines.append(f"{name:<22} {r['images']:>7} {r['views']:>5} {r['dim']:>5} {r['size_mb']:>8.1f}  "
                     f"{r['backbone']}{note}")
    return "\n".join(lines)


@cache.command("ls")
@click.option("--cache", "cache_root", type=click.Path(file_okay=False), help=CACHE_HELP)
@json_option
@library_errors
def cache_ls(cache_root, as_json) -> None:
    """List the caches in the cache directory."""
    from natix.cache.store import list_caches, resolve_cache_root

    root = resolve_cache_root(cache_root)
    rows = list_caches(root)
    echo_result(as_json, rows, lambda rows: cache_table(rows) if rows else f"no caches in {root}")


def cache_description(c) -> dict:
    """What `natix cache info --json` prints about an open `FeatureCache`."""
    import numpy as np

    labels = {int(k): int(v) for k, v in zip(*np.unique(c.labels, return_counts=True))}
    levels = {int(k): int(v) for k, v in zip(*np.unique(c.levels, return_counts=True)) if k >= 0}
    return {"path": str(c.path), "fingerprint": c.fingerprint, "images": len(np.unique(c.image_ids)),
            "rows": len(c), "challenge": c.identity.get("challenge"), "levels": levels, "views": c.n_views,
            "dim": c.dim, "dtype": str(c.dtype),
            "labels": {"roadwork": labels.get(1, 0), "no_roadwork": labels.get(0, 0), "unknown": labels.get(-1, 0)},
            "failures": len(c.failures), "conflicts": len(c.conflict_ids), "conflict_list": c.conflicts,
            "natix_version": c.attrs.get("natix_version"),
            "created": c.attrs.get("created"), "updated": c.attrs.get("updated"), "source": c.source,
            "identity": c.identity, "view_table": [{"name": v.name, "box": v.box, "flip": v.flip} for v in c.views],
            "failure_list": c.failures}


def cache_text(info: dict, shown_failures: int = 10) -> str:
    """`natix cache info` as text, from :func:`cache_description`."""
    ident, n = info["identity"], info["labels"]
    bb, v, p = ident["backbone"], ident["views"], ident["preprocess"]
    adapter = "none" if not bb["adapter"] else bb["adapter"]["weights_sha256"][:12]
    lines = [f"file         {info['path']}",
             f"fingerprint  {info['fingerprint']}",
             f"features     [{info['rows']}, {info['views']}, {info['dim']}] {info['dtype']}",
             f"labels       {n['roadwork']} roadwork, {n['no_roadwork']} no_roadwork, {n['unknown']} unknown",
             f"backbone     {info['source'].get('backbone', '?')} ({bb['loader']})  weights "
             f"{bb['weights_sha256'][:12]}  adapter {adapter}  pool {bb['pool']}",
             f"views        {v['n_views']} (grid {v['grid']}, overlap {v['overlap']}, view {v['view_size']}, "
             f"tile {v['tile_size']}, flips {v['flips']}); precision {ident['precision']}",
             f"preprocess   {p['resize']} / {p['sampler']}, mean {p['mean']}, std {p['std']}",
             f"view table   {', '.join(row['name'] for row in info['view_table'])}",
             f"written      created {info['created']}, updated {info['updated']}, natix {info['natix_version']}",
             f"failures     {info['failures']}"]
    chal = info["challenge"]
    if chal:
        by_level = ", ".join(f"{k}: {v}" for k, v in info["levels"].items()) or "none"
        lines.insert(3, f"challenge    {chal['name']} (seed {chal.get('seed', '-')}): {chal['draws']} draw(s) per image, "
                        f"{info['images']} images, {info['rows']} rows; rows by level {by_level}")
    lines += [f"  {fl['path']}: {fl['reason']}" for fl in info["failure_list"][:shown_failures]]
    if info["failures"] > shown_failures:
        lines.append(f"  ... {info['failures'] - shown_failures} more (use --json)")
    if info["conflicts"]:
        lines.append(f"conflicts    {info['conflicts']} image{'s' if info['conflicts'] > 1 else ''} listed with "
                     "conflicting labels (held out of every split)")
        listings: dict[str, list[str]] = {}
        for c in info["conflict_list"]:
            listings.setdefault(c["id"], []).append(f"{c['path']} ({c['label']})")
        lines += [f"  {i[:12]}: {', '.join(v)}" for i, v in list(listings.items())[:shown_failures]]
        if len(listings) > shown_failures:
            lines.append(f"  ... {len(listings) - shown_failures} more (use --json)")
    return "\n".join(lines)


@cache.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@library_errors
def cache_info(file, as_json) -> None:
    """Describe one cache file: identity, contents, views, failures."""
    from natix.cache.store import open_cache

    with open_cache(file) as c:
        info = cache_description(c)
    echo_result(as_json, info, cache_text)


@cache.command("verify")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@library_errors
def cache_verify(file, as_json) -> None:
    """Check a cache file: fingerprint, row counts, ids, labels, finite values, checksums, unmerged chunks.
    A damaged file exits with status 1 (with --json too, after the JSON)."""
    from natix.cache.store import verify_cache

    report = verify_cache(file)
    if as_json:
        echo_json(report)
    else:
        for note in report["notes"]:
            click.echo(f"note: {note}", err=True)
    if report["ok"]:
        if not as_json:
            click.echo(f"ok: {report['images']} images x {report['views']} views x {report['dim']} dims; "
                       f"checked {', '.join(report['checked'])}")
        return
    n = len(report["problems"])
    raise click.ClickException(f"{file} failed verification ({n} problem{'s' if n > 1 else ''}): "
                               + "; ".join(report["problems"]))
