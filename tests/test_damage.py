"""The damage matrix: every corruption class through every command that reads what it damages.

A small cache and bundle are built once; each case damages a fresh copy and runs `cache verify`,
`fit-head`, an `extract` rerun and `export` (cache damage) or `predict` (bundle damage). Every
outcome is either success (a documented repair, or a command that does not read what was damaged)
or one line on the output with a non-zero exit status; never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from natix.cli import cli

FIT = ["--ratios", "0.25,0.25,0.25,0.25", "--max-epochs", "2", "--threads", "1"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_refused(r, *, what: str):
    """Non-zero exit, exactly one line of output, no exception escaping the CLI."""
    assert r.exception is None or isinstance(r.exception, SystemExit), (what, repr(r.exception))
    assert r.exit_code != 0, (what, r.output)
    assert r.output.count("\n") == 1 and r.output.startswith("Error: "), (what, r.output)
    assert "Traceback" not in r.output


def assert_clean(r, *, what: str):
    """Success, or a one-line refusal; never an exception."""
    if r.exit_code != 0:
        assert_refused(r, what=what)


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_images, tiny_backbone):
    """A cache, a run fitted on it and the run's bundle (built once)."""
    root = tmp_path_factory.mktemp("damage")
    r = run("extract", demo_images, "--backbone", tiny_backbone, "--views", "10", "--cache", root / "cache",
            "--workers", "0", "-q")
    assert r.exit_code == 0, r.output
    [h5] = (root / "cache").glob("*.h5")
    r = run("fit-head", h5, *FIT, "--out", root / "run")
    assert r.exit_code == 0, r.output
    r = run("export", root / "run", "--out", root / "bundle")
    assert r.exit_code == 0, r.output
    return {"root": root, "h5": h5, "images": demo_images, "backbone": tiny_backbone,
            "sha256": hashlib.sha256(h5.read_bytes()).hexdigest()}


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def _set(name, index, value):
    def fn(f):
        data = f[name][...]
        data[index] = value
        f[name][...] = data
    return fn


def _duplicate_id(f):
    ids = f["ids"][...]
    ids[1] = ids[0]
    f["ids"][...] = ids


def _delete(name):
    def fn(f):
        del f[name]
    return fn


def _flip_feature_byte(path):
    """Flip one byte inside the stored features (not through HDF5: as a bad disk would)."""
    with h5py.File(path, "r") as f:
        offset = f["features"].id.get_chunk_info(0).byte_offset + 101
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _damaged_part(path):
    """A part file of an interrupted run next to the cache, with a byte flipped inside it."""
    from natix.cache.store import CacheWriter, Rows, open_cache

    with open_cache(path) as cache:
        identity, source, dim, dtype = cache.identity, cache.source, cache.dim, cache.dtype
        table = [{"name": v.name, "box": list(v.box), "flip": v.flip} for v in cache.views]
    with CacheWriter(path.parent, identity, table, dim=dim, store_dtype=str(dtype), source=source) as w:
        part = w.add_part(np.ones((1, len(table), dim), dtype=dtype),
                          Rows(["f" * 64], ["/img/x.jpg"], [1], [""], [(10, 20)]), [])
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))


CACHE_DAMAGE = {
    "byte flipped": _flip_feature_byte,
    "damaged part": _damaged_part,
    "truncated": _truncate,
    "feature edited": lambda p: _edit(p, _set("features", (3, 2, 5), 7.0)),
    "features NaN": lambda p: _edit(p, _set("features", (0, 0, 0), np.nan)),
    "dataset deleted": lambda p: _edit(p, _delete("labels")),
    "label 7": lambda p: _edit(p, _set("labels", 0, 7)),
    "file missing": lambda p: p.unlink(),
    "duplicate id": lambda p: _edit(p, _duplicate_id),
}


@pytest.fixture
def damaged_copy(world, tmp_path):
    """A copy of the cache directory, and of the run re-pointed at it."""
    cache_dir = shutil.copytree(world["h5"].parent, tmp_path / "cache")
    h5 = cache_dir / world["h5"].name
    run_dir = shutil.copytree(world["root"] / "run", tmp_path / "run")
    config = json.loads((run_dir / "config.json").read_text())
    config["cache"]["path"] = str(h5)
    (run_dir / "config.json").write_text(json.dumps(config))
    return h5, run_dir


@pytest.mark.parametrize("damage", sorted(CACHE_DAMAGE))
def test_cache_damage_through_every_command(world, damaged_copy, tmp_path, damage):
    h5, run_dir = damaged_copy
    CACHE_DAMAGE[damage](h5)
    assert_refused(run("cache", "verify", h5), what=f"verify after {damage}")
    r = run("fit-head", h5, *FIT, "--out", tmp_path / "new-run")
    if damage == "damaged part":  # training reads the merged cache only, which is intact
        assert r.exit_code == 0, r.output
    else:
        assert_refused(r, what=f"fit-head after {damage}")
        assert not (tmp_path / "new-run" / "config.json").exists()
    r = run("extract", world["images"], "--backbone", world["backbone"], "--views", "10", "--cache", h5.parent,
            "--workers", "0", "-q")
    if damage in ("label 7", "file missing"):
        # Documented repairs: labels come back from the source; a missing cache is extracted anew.
        assert r.exit_code == 0, (damage, r.output)
        assert run("cache", "verify", next(h5.parent.glob("*.h5"))).exit_code == 0
    else:
        assert_refused(r, what=f"extract after {damage}")
    assert_clean(run("export", run_dir, "--out", tmp_path / "bundle"), what=f"export after {damage}")


def _manifest_edit(field_fn):
    """Edit manifest.json and recompute its digest, as someone who can write the bundle could."""
    from natix.serve.manifest import DIGEST_KEY, digest

    def fn(bundle):
        path = bundle / "manifest.json"
        manifest = json.loads(path.read_text())
        field_fn(manifest)
        manifest.pop(DIGEST_KEY, None)
        manifest[DIGEST_KEY] = digest(manifest)
        path.write_text(json.dumps(manifest))
    return fn


def _flip(name):
    def fn(bundle):
        data = bytearray((bundle / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle / name).write_bytes(bytes(data))
    return fn


BUNDLE_DAMAGE = {
    "prior 5": _manifest_edit(lambda m: m.update(prior=5.0)),
    "store dtype complex128": _manifest_edit(lambda m: m["stages"][0].update(store_dtype="complex128")),
    "precision int4": _manifest_edit(lambda m: m["stages"][0].update(precision="int4")),
    "external stage added": _manifest_edit(lambda m: (m["stages"].append({"external": "pprint:pprint"}),
                                                      m.update(router={"mode": "budget", "thresholds": [0.5],
                                                                       "confidence": ["max_prob"]}))),
    "head file flipped": _flip("stage0_head.safetensors"),
    "head file missing": lambda b: (b / "stage0_head.safetensors").unlink(),
    "manifest truncated": lambda b: (b / "manifest.json").write_text((b / "manifest.json").read_text()[:50]),
    "manifest missing": lambda b: (b / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(BUNDLE_DAMAGE))
def test_bundle_damage_through_predict(world, tmp_path, damage):
    bundle = shutil.copytree(world["root"] / "bundle", tmp_path / "bundle")
    BUNDLE_DAMAGE[damage](bundle)
    image = sorted(world["images"].glob("*.jpg"))[0]
    assert_refused(run("predict", bundle, image), what=f"predict after {damage}")


def test_the_undamaged_world_works(world):
    """The matrix's baseline: every command succeeds on the undamaged cache and bundle."""
    assert run("cache", "verify", world["h5"]).exit_code == 0
    image = sorted(world["images"].glob("*.jpg"))[0]
    r = run("predict", world["root"] / "bundle", image)
    assert r.exit_code == 0 and str(image) in r.output, r.output
    assert hashlib.sha256(world["h5"].read_bytes()).hexdigest() == world["sha256"]  # copies were damaged, not it
