"""`natix finetune`: the run it writes, its splits, the adapter's way back into the cache, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from natix.cache.store import open_cache
from natix.cli import cli
from natix.errors import ConfigError
from natix.finetune.train import CHECKPOINT

FAST = ["--ratios", "0.25,0.25,0.25,0.25", "--batch-size", "2", "--lr", "0.01", "--head-lr", "0.01", "-q"]


def _run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_finetune_writes_a_run_and_extracts_a_new_cache(demo_images, tiny_backbone, tmp_path):
    frozen = _run("extract", demo_images, "--backbone", tiny_backbone, "--views", "1", "--cache", tmp_path / "c",
                  "--workers", "0", "-q", "--json")
    frozen = json.loads(frozen.stdout)
    r = _run("finetune", demo_images, "--backbone", tiny_backbone, "--out", tmp_path / "run", "--epochs", "2",
             "--extract", "--cache", tmp_path / "c", *FAST)
    assert "adapter   " in r.output and "--adapter" in r.output and "new fingerprint" in r.output
    assert "other caches there, unchanged (size and mtime): 1" in r.output
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"adapter", "head.safetensors", "config.json", "history.json",
                                               "metrics.json", "splits.json"}
    assert (run / "adapter" / "adapter_config.json").is_file()
    caches = sorted((tmp_path / "c").glob("*.h5"))
    assert len(caches) == 2 and frozen["cache_file"] in map(str, caches)  # the frozen cache is kept
    tuned = next(c for c in caches if str(c) != frozen["cache_file"])
    with open_cache(tuned) as c:
        assert c.identity["backbone"]["adapter"] is not None
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"train", "val_select", "val_calib", "val_test"}
    history = json.loads((run / "history.json").read_text())
    assert 1 <= len(history["epochs"]) <= 2 and history["best_epoch"] in (0, 1)


def test_the_splits_are_tier_2s_splits_of_the_same_images(demo_images, tiny_backbone, tmp_path):
    _run("finetune", demo_images, "--backbone", tiny_backbone, "--out", tmp_path / "run", "--epochs", "1", *FAST)
    _run("extract", demo_images, "--backbone", tiny_backbone, "--views", "1", "--cache", tmp_path / "c",
         "--workers", "0", "-q")
    [cache] = (tmp_path / "c").glob("*.h5")
    _run("fit-head", cache, "--out", tmp_path / "head", "--ratios", "0.25,0.25,0.25,0.25")
    ours = json.loads((tmp_path / "run" / "splits.json").read_text())
    theirs = json.loads((tmp_path / "head" / "splits.json").read_text())
    assert ours["ids"] == theirs["ids"]  # val_select/val_calib/val_test images are never trained on


def _weights(run):
    return {**load_file(str(run / "adapter" / "adapter_model.safetensors")), **{
        f"head.{k}": v for k, v in load_file(str(run / "head.safetensors")).items()}}


def test_resume_after_kill_9_ends_with_the_weights_of_an_uninterrupted_run(demo_images, tiny_backbone, tmp_path):
    args = ["finetune", str(demo_images), "--backbone", str(tiny_backbone), "--epochs", "6", "--patience", "6",
            "--save-every", "1", "--batch-size", "1", "--ratios", "0.25,0.25,0.25,0.25", "--lr", "0.01", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "natix.cli"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(cmd + args + ["--out", str(whole)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(cmd + args + ["--out", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / CHECKPOINT).is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (cut / CHECKPOINT).is_file(), "the run ended before its first checkpoint: make it longer"
    refused = CliRunner().invoke(cli, args[:] + ["--out", str(cut)])
    assert refused.exit_code != 0 and "pass --resume" in refused.output
    resumed = subprocess.run(cmd + args + ["--out", str(cut), "--resume", "--json"], env=env, check=True,
                             capture_output=True, text=True)
    assert json.loads(resumed.stdout)["resumed_at"] is not None
    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not (cut / CHECKPOINT).exists()


def test_bad_options_and_outs_are_refused(demo_images, tiny_backbone, tmp_path):
    from natix.finetune.train import FinetuneConfig, finetune

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not a natix fine-tuning run"):
        finetune(demo_images, str(tiny_backbone), tmp_path / "taken")
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        FinetuneConfig(epochs=0)
    r = CliRunner().invoke(cli, ["finetune", str(demo_images), "--backbone", str(tiny_backbone), "--out",
                                 str(tmp_path / "x"), "--method", "qlora"])
    assert r.exit_code == 2 and "qlora" in r.output


def test_a_bundle_from_the_adapted_cache_serves_what_the_cache_gives(demo_images, tiny_backbone, tmp_path):
    from natix.serve import export_bundle, load_bundle

    _run("finetune", demo_images, "--backbone", tiny_backbone, "--out", tmp_path / "ft", "--epochs", "1",
         "--extract", "--cache", tmp_path / "c", *FAST)
    [cache] = (tmp_path / "c").glob("*.h5")
    _run("fit-head", cache, "--out", tmp_path / "head", "--ratios", "0.25,0.25,0.25,0.25")
    bundle = load_bundle(export_bundle(tmp_path / "head", tmp_path / "bundle"))
    with np.load(tmp_path / "head" / "predictions" / "val_test.npz") as z:
        ids, prob = z["ids"], z["prob"]
    with open_cache(cache) as c:
        path_of = dict(zip(c.ids.tolist(), c.paths.tolist()))
    np.testing.assert_allclose(bundle.roadwork_probability([path_of[i] for i in ids]), prob, rtol=0, atol=1e-6)


def test_fine_tuning_on_top_of_an_adapter_saves_the_merged_backbone(demo_images, tiny_backbone, tmp_path):
    _run("finetune", demo_images, "--backbone", tiny_backbone, "--out", tmp_path / "first", "--epochs", "1", *FAST)
    r = _run("finetune", demo_images, "--backbone", tiny_backbone, "--init-adapter", tmp_path / "first" / "adapter",
             "--out", tmp_path / "second", "--epochs", "1", "--extract", "--cache", tmp_path / "c", *FAST)
    adapter = json.loads((tmp_path / "second" / "config.json").read_text())["adapter"]
    assert adapter["option"] == "--backbone"  # the earlier adapter is inside: a lone adapter would drop it
    assert (tmp_path / "second" / "adapter" / "config.json").is_file() and "new fingerprint" in r.output


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_train_the_adapter_one_process_trains(demo_images, tiny_backbone, tmp_path):
    args = ["finetune", str(demo_images), "--backbone", str(tiny_backbone), "--epochs", "2", "--patience", "2",
            "--batch-size", "3", "--grad-accum", "2", "--ratios", "0.4,0.2,0.2,0.2", "--lr", "0.01", "--device",
            "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "natix", *args, "--out", str(one)], env=env, check=True,
                   capture_output=True)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(_free_port()), "-m", "natix", *args, "--out", str(two)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert json.loads((one / "splits.json").read_text()) == json.loads((two / "splits.json").read_text())
    assert done.stdout.count("adapter   ") == 1  # rank 0 alone reports and writes


def test_dino_pretraining_writes_an_adapter_that_extraction_and_finetune_read(demo_images, tiny_backbone, tmp_path):
    args = ["finetune", demo_images, "--backbone", tiny_backbone, "--objective", "dino", "--epochs", "2",
            "--batch-size", "4", "--local-crops", "2", "--lr", "0.001", "-q"]
    r = _run(*args, "--out", tmp_path / "dino")
    assert "DINO, 2 epochs" in r.output
    history = json.loads((tmp_path / "dino" / "history.json").read_text())["epochs"]
    assert len(history) == 2 and all(np.isfinite(e["dino_loss"]) for e in history)
    adapter = tmp_path / "dino" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.layer.1"]  # LoRA on every block, the last block in full
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("layer.0.attention.q_proj.lora_A" in k for k in weights)
    [q] = [k for k in weights if k.endswith("layer.1.attention.q_proj.weight")]  # the whole last block
    base = load_file(str(next(tiny_backbone.glob("*.safetensors"))))
    assert not np.allclose(weights[q], base[q.removeprefix("base_model.model.model.")])  # and it trained
    _run(*args, "--out", tmp_path / "again")
    again = load_file(str(tmp_path / "again" / "adapter" / "adapter_model.safetensors"))
    assert all(np.array_equal(weights[k], again[k]) for k in weights)  # deterministic for a seed
    frozen = json.loads(_run("extract", demo_images, "--backbone", tiny_backbone, "--views", "1", "--cache",
                             tmp_path / "c", "--workers", "0", "-q", "--json").output)
    tuned = json.loads(_run("extract", demo_images, "--backbone", tiny_backbone, "--adapter", adapter, "--views", "1",
                            "--cache", tmp_path / "c", "--workers", "0", "-q", "--json").output)
    assert tuned["fingerprint"] != frozen["fingerprint"]
    r = _run("finetune", demo_images, "--backbone", tiny_backbone, "--init-adapter", adapter, "--out", tmp_path / "sup",
             "--epochs", "1", *FAST)
    assert "--backbone" in r.output  # supervised on top of the DINO adapter: the merged backbone is saved
    bad = CliRunner().invoke(cli, [str(a) for a in args] + ["--out", str(tmp_path / "x"), "--resume"])
    assert bad.exit_code == 2 and "--objective dino takes no" in bad.output
