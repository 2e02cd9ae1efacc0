"""`natix finetune --challenge`: validator challenge recipes as training augmentation (draw e at epoch e,
draw 0 for validation and the metrics), deterministic, resumable, refused where it means nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from natix.cli import cli
from natix.data import challenge_recipe
from natix.data.decode import decode_image, read_image
from natix.errors import ConfigError
from natix.extract.featurizer import Featurizer
from natix.finetune.loop import Model, labeled_images
from natix.finetune.train import CHECKPOINT, FinetuneConfig, finetune

FAST = ["--ratios", "0.25,0.25,0.25,0.25", "--batch-size", "2", "--lr", "0.01", "--head-lr", "0.01", "-q"]
RATIOS = (0.25, 0.25, 0.25, 0.25)


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _run(*args):
    r = _invoke(*args)
    assert r.exit_code == 0, r.output
    return r


def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # status lines ("loading ...") may come first
    return errors[0]


def _weights(run):
    return {**load_file(str(run / "adapter" / "adapter_model.safetensors")), **{
        f"head.{k}": v for k, v in load_file(str(run / "head.safetensors")).items()}}


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def _config(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"epochs": 2, "patience": 2, "batch_size": 2, "lr": 0.01, "head_lr": 0.01, **kw})


def _spy_on_images(monkeypatch) -> list:
    """Record, per call of Model.loss (the draw it was given) and Model.predict (validation and the
    metrics), the paths and the uint8 [H, W, 3] images the featurizer built their views from."""
    built, calls = [], []
    views = Featurizer.views

    def spy_views(self, images):
        built.extend(im.permute(1, 2, 0).cpu().numpy().copy() for im in images)
        return views(self, images)

    def recorded(name, method):
        def spy(self, paths, *args, **kwargs):
            start = len(built)
            out = method(self, paths, *args, **kwargs)
            calls.append((name, kwargs.get("draw"), list(paths), built[start:]))
            return out

        return spy

    monkeypatch.setattr(Featurizer, "views", spy_views)
    monkeypatch.setattr(Model, "loss", recorded("loss", Model.loss))
    monkeypatch.setattr(Model, "predict", recorded("predict", Model.predict))
    return calls


def test_training_sees_draw_e_at_epoch_e_and_validation_draw_0(demo_images, tiny_backbone, tmp_path, monkeypatch):
    calls = _spy_on_images(monkeypatch)
    res = finetune(demo_images, str(tiny_backbone), tmp_path / "run", ratios=RATIOS, progress=False,
                   config=_config(challenge="validator-e1", challenge_seed=3))
    recipe = challenge_recipe("validator-e1", seed=3)
    images = labeled_images(demo_images)
    id_of = dict(zip(images.paths, images.ids.tolist()))

    def drawn(path, draw):
        return recipe.draw(decode_image(read_image(path)), id_of[path], draw)[0]

    trained = [c for c in calls if c[0] == "loss"]
    per_epoch = len(trained) // 2
    assert len(res.history["epochs"]) == 2 and per_epoch >= 1
    assert [draw for _, draw, _, _ in trained] == [0] * per_epoch + [1] * per_epoch  # draw e at epoch e
    seen = {}
    for _, draw, paths, built in trained:
        assert len(built) == len(paths)  # the views of each training image were built from its draw
        for path, image in zip(paths, built):
            np.testing.assert_array_equal(image, drawn(path, draw), err_msg=f"{path} draw {draw}")
            seen[path, draw] = image
    paths = {p for p, _ in seen}
    assert any(not np.array_equal(seen[p, 0], seen[p, 1]) for p in paths)  # the epochs differ
    predicted = [c for c in calls if c[0] == "predict"]
    assert len(predicted) == 2 + 4  # val_select after each epoch, then the metrics of the four splits
    for _, _, paths, built in predicted:
        assert len(built) == len(paths)
        for path, image in zip(paths, built):
            np.testing.assert_array_equal(image, drawn(path, 0), err_msg=path)
    assert res.challenge == recipe.identity()


def test_a_challenge_run_is_deterministic_and_clean_is_the_default(demo_images, tiny_backbone, tmp_path):
    args = ["finetune", demo_images, "--backbone", tiny_backbone, "--epochs", "2", "--patience", "2", *FAST]
    r = _run(*args, "--out", tmp_path / "a", "--challenge", "validator-e1", "--challenge-seed", "1")
    assert "challenge validator-e1 (seed 1)" in r.output and "metrics below are under draw 0" in r.output
    _run(*args, "--out", tmp_path / "b", "--challenge", "validator-e1", "--challenge-seed", "1")
    _run(*args, "--out", tmp_path / "other-seed", "--challenge", "validator-e1", "--challenge-seed", "2")
    plain = _run(*args, "--out", tmp_path / "plain")
    _run(*args, "--out", tmp_path / "clean", "--challenge", "clean")
    assert _same_weights(tmp_path / "a", tmp_path / "b")
    assert not _same_weights(tmp_path / "a", tmp_path / "other-seed")
    assert _same_weights(tmp_path / "plain", tmp_path / "clean") and not _same_weights(tmp_path / "a",
                                                                                      tmp_path / "plain")
    assert "draw 0" not in plain.output and "challenge " not in plain.output
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["challenge"] == challenge_recipe("validator-e1", seed=1).identity()
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["challenge"] is None


def test_the_view_cache_keeps_source_images_under_a_challenge(demo_images, tiny_backbone, tmp_path, monkeypatch):
    import natix.data.decode as decode

    reads = []
    read = decode.read_image

    def counted(path):
        reads.append(str(path))
        return read(path)

    monkeypatch.setattr(decode, "read_image", counted)
    kept = finetune(demo_images, str(tiny_backbone), tmp_path / "kept", ratios=RATIOS, progress=False,
                    config=_config(challenge="validator-e2"))
    assert len(reads) == len(set(reads))  # every image decoded once, its draws made from the kept source
    reads.clear()
    finetune(demo_images, str(tiny_backbone), tmp_path / "none", ratios=RATIOS, progress=False,
             config=_config(challenge="validator-e2", view_cache_mb=0))
    assert len(reads) > len(set(reads))  # nothing kept: decoded again every epoch
    assert _same_weights(tmp_path / "kept", tmp_path / "none") and kept.challenge["name"] == "validator-e2"


class _Interrupted(Exception):
    """Raised from an optimizer step: a crash in the middle of an epoch."""


def test_resume_with_a_challenge_ends_with_the_weights_of_an_uninterrupted_run(demo_images, tiny_backbone, tmp_path,
                                                                               monkeypatch):
    args = ["finetune", demo_images, "--backbone", tiny_backbone, "--epochs", "3", "--patience", "3", "--save-every",
            "1", "--batch-size", "1", "--ratios", "0.25,0.25,0.25,0.25", "--lr", "0.01", "--head-lr", "0.01", "-q",
            "--challenge", "validator-e1", "--challenge-seed", "5"]
    _run(*args, "--out", tmp_path / "whole")
    step, steps = Model.step, []

    def crashing(self, state, dist):
        if len(steps) == 3:  # after three steps (checkpointed), in the second epoch
            raise _Interrupted
        steps.append(state["steps"])
        step(self, state, dist)

    monkeypatch.setattr(Model, "step", crashing)
    cut = tmp_path / "cut"
    assert isinstance(_invoke(*args, "--out", cut).exception, _Interrupted)
    monkeypatch.setattr(Model, "step", step)
    assert (cut / CHECKPOINT).is_file()
    for other in (["--challenge", "validator-e2"], ["--challenge-seed", "6"], ["--challenge", "clean",
                                                                              "--challenge-seed", "0"]):
        refused = _invoke(*args, *other, "--out", cut, "--resume")
        assert "was written with other options" in _one_line_error(refused, 1), other
    resumed = json.loads(_run(*args, "--out", cut, "--resume", "--json").output)
    assert resumed["resumed_at"][0] == 1 and resumed["challenge"]["name"] == "validator-e1"
    assert _same_weights(tmp_path / "whole", cut) and not (cut / CHECKPOINT).exists()


@pytest.mark.parametrize("extra, code, match", [
    (["--challenge", "nope"], 2, "'nope' is not one of 'clean', 'native', 'validator-e1', 'validator-e2'"),
    (["--objective", "dino", "--challenge", "validator-e1"], 2, "--objective dino takes no --challenge"),
    (["--objective", "dino", "--challenge-seed", "3"], 2, "--objective dino takes no --challenge"),
    (["--challenge-seed", "3"], 1, "challenge seed 3 needs a challenge recipe: pass --challenge validator-e1"),
    (["--challenge", "native", "--challenge-seed", "-1"], 1, "challenge seed must be an integer >= 0"),
])
def test_bad_challenge_options_are_one_line_errors(demo_images, tiny_backbone, tmp_path, extra, code, match):
    r = _invoke("finetune", demo_images, "--backbone", tiny_backbone, "--out", tmp_path / "x", *extra)
    assert match in _one_line_error(r, code)
    assert not (tmp_path / "x").exists()


def test_the_library_refuses_an_unknown_recipe_and_a_challenge_for_dino(demo_images, tiny_backbone, tmp_path):
    from natix.finetune.dino import pretrain

    with pytest.raises(ConfigError, match="unknown challenge recipe 'nope': pass one of clean, native, validator-e1"):
        FinetuneConfig(challenge="nope")
    assert FinetuneConfig(challenge="validator-e2", challenge_seed=4).to_json()["challenge_seed"] == 4
    with pytest.raises(ConfigError, match="--objective dino takes no challenge recipe"):
        pretrain(demo_images, str(tiny_backbone), tmp_path / "dino", config=FinetuneConfig(challenge="native"))
    assert not (tmp_path / "dino").exists()
