"""Shared serving fixtures: two stages over the demo images (10 views, and the global view only)."""

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
