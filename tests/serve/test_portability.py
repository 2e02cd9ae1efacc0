"""A bundle whose backbone was given as a relative path loads from any folder, and moved along
with its backbone; a recorded local path never becomes a Hub download."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from natix.cli import cli
from natix.errors import BackboneError
from natix.serve import load_bundle


def make_project(root: Path, demo_images: Path, tiny_backbone: Path) -> Path:
    """A folder with models/tiny, a cache extracted with the relative spec 'models/tiny', a run and
    its bundle, every command run from inside the folder (paths as a user types them)."""
    shutil.copytree(tiny_backbone, root / "models" / "tiny")
    r = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        res = r.invoke(cli, ["extract", str(demo_images), "--backbone", "models/tiny", "--views", "1", "--cache",
                             "cache", "--workers", "0", "-q"])
        assert res.exit_code == 0, res.output
        [h5] = Path("cache").glob("*.h5")
        res = r.invoke(cli, ["fit-head", str(h5), "--agg", "global", "--out", "run", "--max-epochs", "2",
                             "--ratios", "0.25,0.25,0.25,0.25"])
        assert res.exit_code == 0, res.output
        res = r.invoke(cli, ["export", "run", "--out", "bundle"])
        assert res.exit_code == 0, res.output
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory, demo_images, tiny_backbone):
    return make_project(tmp_path_factory.mktemp("project"), demo_images, tiny_backbone)


def test_the_bundle_records_the_backbone_path_absolute_and_relative_to_itself(project):
    backbone = json.loads((project / "bundle" / "manifest.json").read_text())["stages"][0]["backbone"]
    assert backbone["spec"] == "models/tiny"  # as typed
    assert backbone["local"]["spec"] == {"absolute": str((project / "models" / "tiny").resolve()),
                                         "relative": "../models/tiny"}
    assert backbone["local"]["checkpoint"] is None and backbone["local"]["adapter"] is None


def test_a_bundle_with_a_relative_backbone_loads_from_another_folder(project, demo_images, tmp_path, monkeypatch,
                                                                   dead_hub):
    images = sorted(str(p) for p in demo_images.rglob("*.jpg"))
    expected = load_bundle(project / "bundle", backbone=str(project / "models" / "tiny")).roadwork_probability(images)
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(load_bundle(project / "bundle").roadwork_probability(images), expected)
    r = CliRunner().invoke(cli, ["predict", str(project / "bundle"), images[0], "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["probability"] == pytest.approx(expected[0], abs=1e-9)


def test_a_bundle_moved_with_its_backbone_finds_it_relative_to_itself(demo_images, tiny_backbone, tmp_path,
                                                                     monkeypatch, dead_hub):
    origin = make_project(tmp_path / "origin", demo_images, tiny_backbone)
    images = sorted(str(p) for p in demo_images.rglob("*.jpg"))
    expected = load_bundle(origin / "bundle", backbone=str(origin / "models" / "tiny")).roadwork_probability(images)
    moved = origin.rename(tmp_path / "moved")  # the recorded absolute path is gone
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(load_bundle(moved / "bundle").roadwork_probability(images), expected)

    shutil.rmtree(moved / "models")  # now neither path holds it: one line, fast, no Hub
    start = time.monotonic()
    with pytest.raises(BackboneError, match="--backbone PATH") as info:
        load_bundle(moved / "bundle")
    message = str(info.value)
    assert time.monotonic() - start < 10 and "\n" not in message
    assert str(tmp_path / "origin" / "models" / "tiny") in message and "models/tiny" in message
    r = CliRunner().invoke(cli, ["predict", str(moved / "bundle"), images[0]])
    errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert r.exit_code == 1 and len(errors) == 1 and r.output.rstrip().endswith(errors[0]) and "--backbone PATH" in r.output
    assert load_bundle(moved / "bundle", backbone=str(tiny_backbone)).roadwork_probability(images).shape == expected.shape


def test_an_old_bundle_with_only_a_relative_spec_fails_fast_naming_the_backbone_option(
        project, demo_images, tmp_path, monkeypatch, rewrite, dead_hub, capfd):
    old = shutil.copytree(project / "bundle", tmp_path / "old")
    rewrite(old, lambda m: m["stages"][0]["backbone"].pop("local"))  # as bundles were written before
    monkeypatch.chdir(tmp_path)  # where 'models/tiny' is no folder: it reads as a Hub id
    start = time.monotonic()
    r = CliRunner().invoke(cli, ["predict", str(old), str(next(demo_images.rglob("*.jpg")))])
    assert time.monotonic() - start < 10
    errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert r.exit_code == 1 and len(errors) == 1 and r.output.rstrip().endswith(errors[0]), r.output
    assert "--backbone PATH" in errors[0] and "load_bundle(" not in errors[0].split("--backbone PATH")[0]
    assert "Retrying" not in capfd.readouterr().err
