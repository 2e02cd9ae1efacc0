"""Shared serving fixtures: two stages over the demo images (10 views, and the global view only),
a plain and a calibrated single-run bundle, a budgeted cascade, and a deliberate manifest edit."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from natix.cli import cli


@pytest.fixture(scope="package")
def chain(tmp_path_factory, demo_images, tiny_backbone):
    """extract (10 views and global-only) → fit-head on both → a runnable pair of stages."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("chain")
    r = CliRunner()
    ratios = ["--ratios", "0.25,0.25,0.25,0.25", "--max-epochs", "5"]
    for views, name in (("10", "c10"), ("1", "c1")):
        res = r.invoke(cli, ["extract", str(demo_images), "--backbone", str(tiny_backbone), "--views", views,
                             "--cache", str(root / name), "--workers", "0", "-q"])
        assert res.exit_code == 0, res.output
    for cache, agg, run in (("c10", "attention", "s2"), ("c1", "global", "s1")):
        [h5] = (root / cache).glob("*.h5")
        res = r.invoke(cli, ["fit-head", str(h5), "--agg", agg, "--out", str(root / run), *ratios])
        assert res.exit_code == 0, res.output
    yield root
    torch.set_num_threads(old)


@pytest.fixture(scope="package")
def served(demo_images, tiny_backbone, tmp_path_factory):
    """Demo images → cache → attention run → a plain bundle, then Platt → a calibrated bundle."""
    from natix.cache.store import open_cache
    from natix.calibrate.apply import calibrate_run
    from natix.config import RunOptions
    from natix.extract.extractor import extract
    from natix.heads.runs import fit_run
    from natix.heads.train import HeadConfig, TrainConfig
    from natix.serve import export_bundle

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    res = extract(demo_images, str(tiny_backbone), cache_root=root / "cache",
                  options=RunOptions(batch_size=4, workers=0, progress=False))
    run = root / "run"
    fit_run(res.cache_file, run, head=HeadConfig(agg="attention"), train=TrainConfig(max_epochs=5),
            ratios=(0.25, 0.25, 0.25, 0.25))
    plain = export_bundle(run, root / "plain")
    calibrate_run(run, method="platt")
    calibrated = export_bundle(run, root / "calibrated")
    with open_cache(res.cache_file) as cache:
        X = cache.features(None, dtype=None)
        path_of = dict(zip(cache.ids, cache.paths))
    torch.set_num_threads(old)
    return SimpleNamespace(root=root, run=run, plain=plain, calibrated=calibrated, X=X, path_of=path_of,
                           paths=[path_of[i] for i in sorted(path_of)], cache_ids=sorted(path_of))


@pytest.fixture(scope="package")
def cascade_dir(chain):
    """The shared two-stage runs (global view → 10-view attention) with a budgeted cascade."""
    from natix.cascade.evaluation import cascade_run

    cascade_run(stage1=chain / "s1", stage2=chain / "s2", budget=0.5, out=chain / "casc-bundle")
    return chain


def rewrite_manifest(b: Path, edit) -> None:
    """Apply `edit` to the manifest and give it a consistent digest (a deliberate, not a damaged, change)."""
    from natix.serve.manifest import digest

    m = json.loads((b / "manifest.json").read_text())
    edit(m)
    m["manifest_sha256"] = digest(m)
    (b / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def rewrite():
    """:func:`rewrite_manifest`, for test modules (which cannot import this conftest)."""
    return rewrite_manifest
