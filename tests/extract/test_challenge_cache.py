"""Challenge caches: `natix extract --challenge R --draws K [--seed S]` on the demo images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from natix.cache.store import open_cache, verify_cache
from natix.cli import cli
from natix.config import RunOptions
from natix.data.challenge import challenge_recipe
from natix.data.decode import decode_image
from natix.errors import ConfigError
from natix.extract.extractor import extract

OPTS = RunOptions(batch_size=4, workers=0, progress=False)


def _extract(images, backbone, root, **kw):
    return extract(images, str(backbone), cache_root=root, options=OPTS, **kw)


@pytest.fixture(scope="module")
def e1(tmp_path_factory, demo_images, tiny_backbone):
    root = tmp_path_factory.mktemp("e1")
    return _extract(demo_images, tiny_backbone, root, challenge="validator-e1", draws=2), root


def test_a_challenge_cache_holds_every_draw_with_its_record(e1, demo_images):
    res, _ = e1
    assert res.challenge == "validator-e1" and res.draws == 2 and res.n_views == 1
    recipe = challenge_recipe("validator-e1")
    with open_cache(res.cache_file) as c:
        assert len(c) == 2 * res.images
        assert c.identity["challenge"] == {**recipe.identity(), "draws": 2}
        assert c.view_names == ["global"] and (c.sizes == 224).all()
        for row in (0, 1, len(c) - 1):
            record = c.draws[row]
            image_id, draw = c.ids[row].split(":")
            assert record["draw"] == int(draw) and c.image_ids[row] == image_id
            source = decode_image(open(c.paths[row], "rb").read())
            assert record["source_size"] == list(source.shape[:2])
            assert record["params"] == json.loads(json.dumps(recipe.params(source.shape[:2], image_id, int(draw))))
        assert set(np.unique(c.levels)) <= {0, 1, 2, 3}
    assert verify_cache(res.cache_file)["ok"]


def test_a_rerun_does_no_work_and_the_draws_are_reproducible(e1, demo_images, tiny_backbone, tmp_path):
    res, root = e1
    again = _extract(demo_images, tiny_backbone, root, challenge="validator-e1", draws=2)
    assert again.cache_file == res.cache_file and again.extracted == 0 and again.already_cached == res.images
    fresh = _extract(demo_images, tiny_backbone, tmp_path / "fresh", challenge="validator-e1", draws=2)
    with open_cache(res.cache_file) as a, open_cache(fresh.cache_file) as b:
        order = np.argsort(b.ids)
        np.testing.assert_array_equal(np.sort(a.ids), b.ids[order])
        np.testing.assert_array_equal(a.features(np.argsort(a.ids)), b.features(order))


def test_recipe_seed_and_draws_are_part_of_the_identity(e1, demo_images, tiny_backbone):
    res, root = e1
    other_seed = _extract(demo_images, tiny_backbone, root, challenge="validator-e1", draws=2, challenge_seed=1)
    more = _extract(demo_images, tiny_backbone, root, challenge="validator-e1", draws=3)
    clean = _extract(demo_images, tiny_backbone, root, challenge="clean")
    paths = {res.cache_file, other_seed.cache_file, more.cache_file, clean.cache_file}
    assert len(paths) == 4
    with open_cache(clean.cache_file) as c:
        assert "challenge" not in c.identity and c.draws is None and c.n_views == 10  # what extraction did before


def test_a_grown_source_extracts_only_the_new_images(demo_images, tiny_backbone, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(demo_images, src)
    full = (src / "labels.csv").read_text().splitlines()
    (src / "labels.csv").write_text("\n".join(full[:-3]) + "\n")  # the last three images come later
    first = _extract(src, tiny_backbone, tmp_path / "c", challenge="native")
    (src / "labels.csv").write_text("\n".join(full) + "\n")
    grown = _extract(src, tiny_backbone, tmp_path / "c", challenge="native")
    assert first.images == len(full) - 4 and grown.extracted == 3 and grown.already_cached == first.images
    with open_cache(grown.cache_file) as c:
        assert len(c) == grown.images and all(d["params"]["level"] is None for d in c.draws)


def test_bad_challenge_options_are_one_line_errors(demo_images, tiny_backbone, tmp_path):
    with pytest.raises(ConfigError, match="needs a challenge recipe"):
        _extract(demo_images, tiny_backbone, tmp_path, draws=2)
    with pytest.raises(ConfigError, match="validator-e1"):
        _extract(demo_images, tiny_backbone, tmp_path, challenge="validator-e9")
    r = CliRunner().invoke(cli, ["extract", str(demo_images), "--backbone", str(tiny_backbone), "--challenge",
                                 "nope", "--cache", str(tmp_path)])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and "validator-e1" in r.output
    assert not list(tmp_path.glob("*.h5"))


def test_the_cli_says_what_the_challenge_did(demo_images, tiny_backbone, tmp_path):
    r = CliRunner().invoke(cli, ["extract", str(demo_images), "--backbone", str(tiny_backbone), "--challenge",
                                 "validator-e2", "--draws", "1", "--seed", "5", "--cache", str(tmp_path), "--workers",
                                 "0", "-q"])
    assert r.exit_code == 0, r.output
    assert "challenge validator-e2: 1 draw(s) per image" in r.output and "features  [N, 1, " in r.output


def test_a_damaged_draw_record_is_a_one_line_error(e1, tmp_path):
    import h5py

    from natix.errors import CacheError

    res, _ = e1
    copy = tmp_path / res.cache_file.name
    shutil.copy(res.cache_file, copy)
    with h5py.File(copy, "r+") as f:
        f["challenge"][0] = "{not json"
    with open_cache(copy) as c, pytest.raises(CacheError, match="damaged draw record.*natix cache verify"):
        c.levels
    assert not verify_cache(copy)["ok"]  # the records are under the ids checksum


def test_a_damaged_label_of_one_draw_is_repaired_from_the_source(demo_images, tiny_backbone, tmp_path):
    import h5py

    res = _extract(demo_images, tiny_backbone, tmp_path, challenge="validator-e1", draws=3)
    with h5py.File(res.cache_file, "r+") as f:
        labels = f["labels"][()]
        labels[1] = 1 - labels[1]  # draw 1 of the first image; draw 0 keeps the source's label
        f["labels"][...] = labels
    report = verify_cache(res.cache_file)
    assert not report["ok"] and any("disagree" in p for p in report["problems"])
    again = _extract(demo_images, tiny_backbone, tmp_path, challenge="validator-e1", draws=3)
    assert again.repaired == ("labels",) and again.extracted == 0
    with open_cache(res.cache_file) as c:
        assert c.labels[1] == c.labels[0] == c.labels[2]
    assert verify_cache(res.cache_file)["ok"]


def test_an_image_a_recipe_cannot_transform_is_a_failure_of_that_image(tiny_backbone, tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (96, 64), (90, 120, 40)).save(src / "ok.png")
    Image.new("RGB", (500, 1), (9, 9, 9)).save(src / "thin.png")  # letterboxed to 224×0
    res = extract(src, str(tiny_backbone), cache_root=tmp_path / "c", challenge="validator-e2", draws=2,
                  options=RunOptions(batch_size=4, workers=1, progress=False))
    assert res.extracted == 1 and res.failed == 1
    with open_cache(res.cache_file) as c:
        assert len(c) == 2 and "challenge validator-e2 cannot transform it" in c.failures[0]["reason"]


def test_draws_of_a_recipe_without_randomness_and_a_clean_seed_are_refused(demo_images, tiny_backbone, tmp_path):
    with pytest.raises(ConfigError, match="identical rows: pass --draws 1"):
        _extract(demo_images, tiny_backbone, tmp_path, challenge="native", draws=3)
    with pytest.raises(ConfigError, match="--seed 4 needs a challenge recipe"):
        _extract(demo_images, tiny_backbone, tmp_path, challenge_seed=4)
