import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import natix.extract.extractor
from natix.cache.store import CacheLock, open_cache, verify_cache
from natix.config import RunOptions, ViewRecipe
from natix.data.decode import decode_image
from natix.errors import CacheError, CacheLockedError, DataError, FingerprintMismatchError, NatixError
from natix.extract.backbones import load_backbone
from natix.extract.extractor import extract
from natix.extract.views import build_views, normalize

FAST = RunOptions(batch_size=4, workers=0, progress=False)


def _copy_images(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _first_file_unreadable(monkeypatch):
    """Make the first source file unreadable (as root, permissions cannot); returns the real hasher."""
    import natix.extract.extractor as ex

    real = ex.hash_files

    def flaky(paths, **kw):
        out = real(paths, **kw)
        out[0] = PermissionError(13, "Permission denied")
        return out

    monkeypatch.setattr(ex, "hash_files", flaky)
    return real


def _same_cache(a: Path, b: Path) -> None:
    """Bitwise equality of everything but timestamps."""
    ca, cb = open_cache(a), open_cache(b)
    assert ca.fingerprint == cb.fingerprint
    np.testing.assert_array_equal(ca.ids, cb.ids)
    assert ca.features(dtype=None).tobytes() == cb.features(dtype=None).tobytes()
    for name in ("paths", "labels", "groups", "sizes"):
        np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name))
    assert ca.failures == cb.failures
    assert ca.attrs["features_sha256"] == cb.attrs["features_sha256"]


def test_extract_end_to_end_matches_a_direct_forward(demo_images, tiny_backbone, cache_root):
    r = extract(demo_images, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert (r.images, r.extracted, r.failed, r.already_cached) == (12, 12, 0, 0)
    c = open_cache(r.cache_file)
    assert c.shape == (12, 10, 32) and c.dtype == np.float16
    assert verify_cache(r.cache_file)["ok"]
    labels = dict(line.split(",") for line in (demo_images / "labels.csv").read_text().splitlines()[1:])
    for row, path in enumerate(c.paths):
        data = Path(path).read_bytes()
        assert c.ids[row] == hashlib.sha256(data).hexdigest()
        assert c.labels[row] == int(labels[Path(path).name])
        assert tuple(c.sizes[row]) == decode_image(data).shape[:2]
    # Row 3 recomputed by hand: decode → views → normalise → model.
    bb, _ = load_backbone(str(tiny_backbone))
    img = torch.from_numpy(decode_image(Path(c.paths[3]).read_bytes())).permute(2, 0, 1).contiguous()
    views = build_views([img], ViewRecipe())[224][0]
    with torch.inference_mode():
        ref = bb(normalize(views, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).numpy()
    np.testing.assert_allclose(c.features(np.array([3]))[0], ref, rtol=2e-3, atol=2e-3)


def test_views_20_and_small_tiles(demo_images, tiny_backbone, cache_root):
    r20 = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=20), cache_root=cache_root,
                  options=FAST, store_dtype="float32")
    c = open_cache(r20.cache_file)
    assert c.shape == (12, 20, 32) and c.dtype == np.float32
    assert c.view_names[10] == "global_flip" and c.views[10].flip and c.views[10].box == c.views[0].box
    f = c.features()
    assert not np.allclose(f[:, 0], f[:, 10])  # flipping changes the features of these scenes
    r112 = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(tile_size=112), cache_root=cache_root,
                   options=FAST)
    assert r112.fingerprint != r20.fingerprint and open_cache(r112.cache_file).shape == (12, 10, 32)
    r1 = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=cache_root,
                 options=FAST, pool="cls+mean")
    assert open_cache(r1.cache_file).shape == (12, 1, 64)


def test_rerun_grown_renamed_and_changed(demo_images, tiny_backbone, tmp_path, cache_root):
    data = _copy_images(demo_images, tmp_path / "data")
    first = extract(data, str(tiny_backbone), cache_root=cache_root, options=FAST)
    stat = first.cache_file.stat()

    again = extract(data, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert (again.extracted, again.already_cached, again.model_work) == (0, 12, False)
    assert first.cache_file.stat().st_ino == stat.st_ino  # nothing rewritten

    # Renamed and moved: no model work, paths follow the files.
    moved = tmp_path / "moved"
    moved.mkdir()
    lines = ["path,label"]
    for i, line in enumerate((data / "labels.csv").read_text().splitlines()[1:]):
        name, label = line.split(",")
        (data / name).rename(moved / f"renamed_{i}.jpg")
        lines.append(f"renamed_{i}.jpg,{label}")
    (moved / "labels.csv").write_text("\n".join(lines) + "\n")
    r = extract(moved, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert (r.extracted, r.already_cached, r.metadata_updates) == (0, 12, 12)
    assert all(Path(p).parent == moved for p in open_cache(r.cache_file).paths)

    # Grown: only the new images go through the model.
    from natix.data.demo import make_demo_images

    extra = tmp_path / "extra"
    make_demo_images(extra, n=15, seed=0)  # images 0..11 equal the first set, 12..14 are new
    for i in range(12, 15):
        shutil.copy(extra / f"img_{i:05d}.jpg", moved / f"new_{i}.jpg")
        lines.append(f"new_{i}.jpg,1")
    (moved / "labels.csv").write_text("\n".join(lines) + "\n")
    r = extract(moved, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert (r.extracted, r.already_cached) == (3, 12)
    assert len(open_cache(r.cache_file)) == 15

    # A changed file is a new image.
    p = moved / "renamed_0.jpg"
    from PIL import Image

    Image.open(p).rotate(90, expand=True).save(p, quality=90)
    r = extract(moved, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert r.extracted == 1 and len(open_cache(r.cache_file)) == 16


def test_failures_are_recorded_and_not_retried(demo_images, tiny_backbone, tmp_path, cache_root):
    data = _copy_images(demo_images, tmp_path / "data")
    good = (data / "img_00000.jpg").read_bytes()
    (data / "img_00000.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (data / "img_00001.jpg").write_bytes(b"not an image")
    shutil.copy(data / "img_00002.jpg", data / "img_00002_copy.jpg")  # same bytes, second path
    lines = (data / "labels.csv").read_text().splitlines() + ["img_00002_copy.jpg,1"]
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    r = extract(data, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert (r.extracted, r.failed) == (10, 2)
    c = open_cache(r.cache_file)
    reasons = {Path(f["path"]).name: f["reason"] for f in c.failures}
    assert "truncated" in reasons["img_00000.jpg"] and "not a recognised" in reasons["img_00001.jpg"]
    assert len(c) == 10 and len(set(c.ids)) == 10
    r2 = extract(data, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert (r2.extracted, r2.known_failures) == (0, 2)


def test_unlabeled_source_stores_minus_one(demo_images, tiny_backbone, tmp_path, cache_root):
    data = tmp_path / "unlabeled"
    data.mkdir()
    for p in sorted(demo_images.glob("*.jpg"))[:3]:
        shutil.copy(p, data / p.name)
    r = extract(data, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert list(open_cache(r.cache_file).labels) == [-1, -1, -1]


def test_workers_give_the_same_features(demo_images, tiny_backbone, tmp_path):
    a = extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "a", options=FAST)
    b = extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "b",
                options=RunOptions(batch_size=4, workers=2, progress=False))
    _same_cache(a.cache_file, b.cache_file)


def test_workers_started_by_spawn_give_the_same_features(demo_images, tiny_backbone, tmp_path):
    """macOS and Python >= 3.14 start DataLoader workers without fork: what a worker gets is pickled."""
    import multiprocessing

    a = extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "a", options=FAST)
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        b = extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "b",
                    options=RunOptions(batch_size=6, workers=1, progress=False))
    finally:
        multiprocessing.set_start_method(before, force=True)
    _same_cache(a.cache_file, b.cache_file)


def test_oom_halves_the_batch_and_loses_nothing(demo_images, tiny_backbone, tmp_path, oom_guard, caplog):
    reference = extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "ref", options=FAST)
    oom_guard.limit = 10
    with caplog.at_level("WARNING", logger="natix.extract.featurizer"):
        r = extract(demo_images, f"oom-guard:{tiny_backbone}", cache_root=tmp_path / "oom", options=FAST)
    assert r.batch_size == 1 and r.extracted == 12  # 40 views → 20 → 10 views per forward
    assert oom_guard.calls[:3] == [40, 20, 10] and set(oom_guard.calls[3:]) == {10}  # later batches keep the size
    assert [m for m in caplog.messages if "out of memory" in m] == [
        "CUDA out of memory: retrying the same images 2 per forward",
        "CUDA out of memory: retrying the same images 1 per forward"]
    a, b = open_cache(reference.cache_file), open_cache(r.cache_file)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.features(), b.features(), atol=2e-3)


def test_interrupted_merge_resumes_to_the_same_file(demo_images, tiny_backbone, tmp_path, monkeypatch):
    reference = extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "ref", options=FAST)
    import natix.cache.store as store

    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith(".h5"):
            raise KeyboardInterrupt  # dies after the parts are durable, before the swap
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "run", options=FAST)
    monkeypatch.setattr(store.os, "replace", real_replace)
    parts = list((tmp_path / "run").glob("*.parts/part-*.npz"))
    assert len(parts) == 3 and not list((tmp_path / "run").glob("*.h5"))
    r = extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "run", options=FAST)
    assert (r.resumed, r.extracted) == (12, 0)
    assert not list((tmp_path / "run").glob("*.h5.tmp-*")) and not list((tmp_path / "run").glob("*.parts"))
    _same_cache(reference.cache_file, r.cache_file)


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tiny_backbone, tmp_path):
    from natix.data.demo import make_demo_images

    data = tmp_path / "data"
    make_demo_images(data, n=40, seed=3)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "natix.cli", "extract", str(data), "--backbone", str(tiny_backbone),
           "--batch-size", "1", "--workers", "0", "--quiet", "--cache", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    parts_dir = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "killed").glob("*.parts/part-*.npz"))
        if len(found) >= 3:
            parts_dir = found[0].parent
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and parts_dir is not None
    assert not list((tmp_path / "killed").glob("*.h5"))  # nothing merged yet
    # The lock died with the process; the next run resumes what the parts hold.
    r = extract(data, str(tiny_backbone), cache_root=tmp_path / "killed",
                options=RunOptions(batch_size=1, workers=0, progress=False))
    assert r.resumed >= 3 and r.resumed + r.extracted == 40
    ref = extract(data, str(tiny_backbone), cache_root=tmp_path / "clean",
                  options=RunOptions(batch_size=1, workers=0, progress=False))
    _same_cache(ref.cache_file, r.cache_file)


def test_locked_cache_names_the_holder(demo_images, tiny_backbone, cache_root):
    r = extract(demo_images, str(tiny_backbone), cache_root=cache_root, options=FAST)
    before = open_cache(r.cache_file).features()
    with CacheLock(r.cache_file):
        with pytest.raises(CacheLockedError, match=rf"pid {os.getpid()} on .* since .*wait for that run"):
            extract(demo_images, str(tiny_backbone), cache_root=cache_root, options=FAST)
    np.testing.assert_array_equal(open_cache(r.cache_file).features(), before)
    assert extract(demo_images, str(tiny_backbone), cache_root=cache_root, options=FAST).already_cached == 12


def test_fingerprint_mismatch_and_corrupt_cache_are_refused_without_loss(demo_images, tiny_backbone, tmp_path):
    one = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "a",
                  options=FAST)
    ten = extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "a", options=FAST)
    shutil.copy(one.cache_file, ten.cache_file)  # a file under another fingerprint's name
    with pytest.raises(FingerprintMismatchError, match="holds fingerprint .* move it away"):
        extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "a", options=FAST)
    assert open_cache(ten.cache_file).shape == (12, 1, 32)  # untouched
    ten.cache_file.write_bytes(b"garbage" * 100)
    with pytest.raises(CacheError, match="unreadable .*move it away"):
        extract(demo_images, str(tiny_backbone), cache_root=tmp_path / "a", options=FAST)
    assert ten.cache_file.read_bytes() == b"garbage" * 100


def test_unwritable_cache_and_bad_data_fail_before_model_work(demo_images, tiny_backbone, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="not writable.*--cache"):
        extract(demo_images, str(tiny_backbone), cache_root=blocker / "sub", options=FAST)
    with pytest.raises(DataError, match="does not exist"):
        extract(tmp_path / "nope", str(tiny_backbone), options=FAST)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        extract(tmp_path / "empty", str(tiny_backbone), options=FAST)


def test_default_cache_root_comes_from_the_environment(demo_images, tiny_backbone, tmp_path):
    r = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), options=FAST)
    assert r.cache_file.parent == Path(os.environ["NATIX_CACHE"])


def test_timm_and_adapter_extraction(demo_images, tiny_backbone, tmp_path, cache_root):
    import timm
    from peft import LoraConfig, get_peft_model
    from timm.models import save_for_hf
    from transformers import DINOv3ViTModel

    torch.manual_seed(0)
    args = dict(depth=2, embed_dim=48, num_heads=2)
    save_for_hf(timm.create_model("vit_small_patch16_dinov3", num_classes=0, **args), tmp_path / "timm",
                model_args=args, safe_serialization=True)
    rt = extract(demo_images, f"timm:local-dir:{tmp_path / 'timm'}", recipe=ViewRecipe(n_views=1),
                 cache_root=cache_root, options=FAST)
    assert open_cache(rt.cache_file).shape == (12, 1, 48)

    peft_model = get_peft_model(DINOv3ViTModel.from_pretrained(tiny_backbone),
                                LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    plain = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=cache_root,
                    options=FAST)
    adapted = extract(demo_images, str(tiny_backbone), adapter=str(tmp_path / "adapter"),
                      recipe=ViewRecipe(n_views=1), cache_root=cache_root, options=FAST)
    assert adapted.fingerprint != plain.fingerprint and adapted.extracted == 12
    assert not np.allclose(open_cache(adapted.cache_file).features(), open_cache(plain.cache_file).features())


def test_unreadable_files_are_failures_and_retried(demo_images, tiny_backbone, tmp_path, cache_root, monkeypatch):
    real = _first_file_unreadable(monkeypatch)
    r = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=cache_root, options=FAST)
    assert (r.extracted, r.failed) == (11, 1)
    c = open_cache(r.cache_file)
    assert c.shape == (11, 1, 32) and "Permission denied" in c.failures[0]["reason"] and c.failures[0]["id"] == ""
    monkeypatch.setattr(natix.extract.extractor, "hash_files", real)
    r = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=cache_root, options=FAST)
    assert r.extracted == 1
    c = open_cache(r.cache_file)
    assert len(c) == 12 and c.failures == []


def test_a_cache_of_only_failures_grows_later(tiny_backbone, tmp_path, cache_root):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad.jpg").write_bytes(b"garbage")
    r = extract(data, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=cache_root, options=FAST)
    assert (r.extracted, r.failed) == (0, 1) and open_cache(r.cache_file).shape == (0, 1, 32)
    from natix.data.demo import make_demo_images

    make_demo_images(data / "more", n=2)
    (data / "more" / "labels.csv").unlink()
    r = extract(data, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=cache_root, options=FAST)
    assert (r.extracted, r.known_failures) == (2, 1) and open_cache(r.cache_file).shape == (2, 1, 32)


def test_lock_is_free_right_after_sigkill_with_workers(tiny_backbone, tmp_path):
    from natix.data.demo import make_demo_images

    data = tmp_path / "data"
    make_demo_images(data, n=40, seed=4)
    cmd = [sys.executable, "-m", "natix.cli", "extract", str(data), "--backbone", str(tiny_backbone),
           "--batch-size", "1", "--workers", "2", "--quiet", "--cache", str(tmp_path / "c")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list((tmp_path / "c").glob("*.parts/part-*")):
        time.sleep(0.005)
    assert proc.poll() is None, "run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Forked decoding workers may still be alive for a moment; they must not hold the lock.
    [lock] = list((tmp_path / "c").glob("*.lock"))
    CacheLock(lock.with_suffix("")).acquire()


def test_corrupt_cache_is_refused_at_merge_and_new_work_is_kept(demo_images, tiny_backbone, tmp_path):
    import h5py

    data = _copy_images(demo_images, tmp_path / "data")
    (data / "labels.csv").unlink()  # a plain folder: removing a file is allowed
    keep = data / "img_00011.jpg"
    moved = tmp_path / "later.jpg"
    keep.rename(moved)
    r = extract(data, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    with h5py.File(r.cache_file, "r+") as f:
        f["features"][0, 0, 0] += 1  # bit rot
    moved.rename(keep)
    with pytest.raises(CacheError, match="corrupt.*move it away"):
        extract(data, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    assert not verify_cache(r.cache_file)["ok"]  # the damage was not re-checksummed
    assert list((tmp_path / "c").glob("*.parts/part-*.npz"))  # the new image's features are kept
    r.cache_file.rename(tmp_path / "broken.h5")
    again = extract(data, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    assert (again.resumed, again.extracted) == (1, 11) and verify_cache(again.cache_file)["ok"]


def test_transient_failures_are_retried_and_decode_failures_only_on_request(demo_images, tiny_backbone,
                                                                           tmp_path, monkeypatch):
    import natix.extract.extractor as ex

    data = _copy_images(demo_images, tmp_path / "data")
    (data / "img_00003.jpg").write_bytes(b"garbage")
    real = ex.hash_bytes
    monkeypatch.setattr(ex, "hash_bytes", lambda b: "0" * 64 if b[:2] == b"\xff\xd8" and len(b) % 7 == 0 else real(b))
    kwargs = dict(recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    r = extract(data, str(tiny_backbone), **kwargs)
    changed = sum(len(p.read_bytes()) % 7 == 0 for p in data.glob("*.jpg") if p.name != "img_00003.jpg")
    assert changed > 0 and r.failed == changed + 1
    monkeypatch.setattr(ex, "hash_bytes", real)
    r = extract(data, str(tiny_backbone), **kwargs)
    assert (r.extracted, r.known_failures) == (changed, 1)  # the transient ones are retried
    assert [f["path"] for f in open_cache(r.cache_file).failures] == [str(data / "img_00003.jpg")]
    r = extract(data, str(tiny_backbone), retry_failures=True, **kwargs)
    assert (r.extracted, r.failed, r.known_failures) == (0, 1, 0)


def test_known_unreadable_files_do_not_rewrite_the_cache(demo_images, tiny_backbone, tmp_path, monkeypatch):
    _first_file_unreadable(monkeypatch)
    kwargs = dict(recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    r = extract(demo_images, str(tiny_backbone), **kwargs)
    inode = r.cache_file.stat().st_ino
    r = extract(demo_images, str(tiny_backbone), **kwargs)
    assert r.failed == 1 and r.cache_file.stat().st_ino == inode


def test_non_utf8_file_names_are_per_image_failures(demo_images, tiny_backbone, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(demo_images / "img_00000.jpg", data / "ok.jpg")
    shutil.copy(demo_images / "img_00001.jpg", os.fsdecode(bytes(data) + b"/bad\xff.jpg"))
    r = extract(data, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    assert (r.extracted, r.failed) == (1, 1)
    [fail] = open_cache(r.cache_file).failures
    assert "not valid UTF-8" in fail["reason"] and "\\xff" in fail["path"]


def test_float16_overflow_is_refused_with_the_fix(demo_images, tiny_backbone, tmp_path, monkeypatch):
    from natix.extract.featurizer import Featurizer

    real = Featurizer.forward
    monkeypatch.setattr(Featurizer, "forward", lambda self, views: real(self, views) * 1e6)
    with pytest.raises(NatixError, match="overflow float16.*--store-dtype float32"):
        extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c",
                options=FAST)
    r = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c",
                options=FAST, store_dtype="float32")
    assert r.extracted == 12 and np.isfinite(open_cache(r.cache_file).features()).all()


def test_resume_reports_no_spurious_metadata_updates(demo_images, tiny_backbone, tmp_path, monkeypatch):
    import natix.cache.store as store

    real_replace = os.replace

    def crash(src, dst):
        if str(dst).endswith(".h5"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    monkeypatch.setattr(store.os, "replace", real_replace)
    r = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    assert (r.resumed, r.metadata_updates) == (12, 0)


def test_a_full_disk_at_the_merge_is_one_line_and_the_rerun_resumes(demo_images, tiny_backbone, tmp_path,
                                                                    monkeypatch):
    from collections import namedtuple

    from click.testing import CliRunner

    from natix.cli import cli

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(1 << 40, 1 << 40, 100_000))
    args = ["extract", str(demo_images), "--backbone", str(tiny_backbone), "--views", "1", "--batch-size", "4",
            "--workers", "0", "--quiet", "--cache", str(tmp_path / "c")]
    r = CliRunner().invoke(cli, args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert re.fullmatch(rf"Error: no space left while merging into {tmp_path / 'c'}: free \d+ MB and rerun; "
                        "finished chunks are kept", lines[0]), lines[0]
    assert len(list((tmp_path / "c").glob("*.parts/part-*.npz"))) == 3  # finished chunks are kept
    assert not [p for p in (tmp_path / "c").iterdir() if p.suffix == ".h5" or ".tmp-" in p.name]
    monkeypatch.undo()
    again = extract(demo_images, str(tiny_backbone), recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c",
                    options=FAST)
    assert (again.resumed, again.extracted) == (12, 0) and verify_cache(again.cache_file)["ok"]


def test_a_no_work_rerun_verifies_the_cache_before_saying_all_is_well(demo_images, tiny_backbone, tmp_path, caplog):
    import h5py

    kwargs = dict(recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    r = extract(demo_images, str(tiny_backbone), **kwargs)
    with h5py.File(r.cache_file, "r+") as f:
        f["features"][2, 0, 0] += 1  # bit rot
    before = r.cache_file.read_bytes()
    with pytest.raises(CacheError, match=rf"cache file '{r.cache_file}' is damaged \(features checksum differs.*\): "
                                         rf"see `natix cache verify {r.cache_file}`; move it away") as info:
        extract(demo_images, str(tiny_backbone), **kwargs)
    assert "\n" not in str(info.value) and r.cache_file.read_bytes() == before
    with caplog.at_level("WARNING", logger="natix.extract.extractor"):
        again = extract(demo_images, str(tiny_backbone), verify=False, **kwargs)
    assert not again.model_work and not again.verified and r.cache_file.read_bytes() == before
    assert any("not verifying the features checksum" in m for m in caplog.messages)


@pytest.mark.parametrize("damage", ["label of 7", "inverted labels", "edited path", "renamed view"])
def test_a_no_work_rerun_repairs_what_the_source_knows(demo_images, tiny_backbone, tmp_path, damage):
    import h5py

    kwargs = dict(recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    r = extract(demo_images, str(tiny_backbone), **kwargs)
    want = open_cache(r.cache_file)
    want_labels, want_paths = want.labels.copy(), want.paths.copy()
    want.close()
    with h5py.File(r.cache_file, "r+") as f:
        if damage == "label of 7":
            f["labels"][3] = 7
        elif damage == "inverted labels":
            f["labels"][...] = 1 - f["labels"][()]
        elif damage == "edited path":
            f["paths"][0] = "/elsewhere.jpg"
        else:
            f["views/name"][0] = "tampered"
    again = extract(demo_images, str(tiny_backbone), **kwargs)
    assert not again.model_work and again.repaired == (("views",) if damage == "renamed view" else ("labels",))
    assert verify_cache(r.cache_file)["ok"]
    with open_cache(r.cache_file) as c:
        np.testing.assert_array_equal(c.labels, want_labels)
        np.testing.assert_array_equal(c.paths, want_paths)
        assert c.view_names == ["global"]
    quiet = extract(demo_images, str(tiny_backbone), **kwargs)
    assert quiet.repaired == () and quiet.verified


def test_damaged_labels_of_images_the_source_no_longer_lists_are_refused(demo_images, tiny_backbone, tmp_path):
    import h5py

    data = _copy_images(demo_images, tmp_path / "data")
    kwargs = dict(recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    r = extract(data, str(tiny_backbone), **kwargs)
    with h5py.File(r.cache_file, "r+") as f:
        f["labels"][...] = 1 - f["labels"][()]
    lines = (data / "labels.csv").read_text().splitlines()
    (data / lines[-1].split(",")[0]).unlink()
    (data / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")
    before = r.cache_file.read_bytes()
    with pytest.raises(CacheError, match=r"is damaged \(labels, paths or groups differ from their checksum\) and 1 of "
                                         r"its images are not in this source.*natix cache verify"):
        extract(data, str(tiny_backbone), **kwargs)
    assert r.cache_file.read_bytes() == before


def test_cli_extract_says_what_it_verified_and_repaired(demo_images, tiny_backbone, tmp_path):
    import h5py
    from click.testing import CliRunner

    from natix.cli import cli

    args = ["extract", str(demo_images), "--backbone", str(tiny_backbone), "--views", "1", "--batch-size", "4",
            "--workers", "0", "--quiet", "--cache", str(tmp_path / "c")]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    [cache_file] = (tmp_path / "c").glob("*.h5")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "no model work: every image is already in the cache, checksum verified" in r.output
    with h5py.File(cache_file, "r+") as f:
        f["labels"][0] = 7
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "repaired  labels, paths and groups from the image source" in r.output, r.output
    r = CliRunner().invoke(cli, [*args, "--skip-checksum"])
    assert r.exit_code == 0 and "checksum not verified (--skip-checksum)" in r.output, r.output
    with h5py.File(cache_file, "r+") as f:
        f["features"][0, 0, 0] += 1
    r = CliRunner().invoke(cli, args)
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "natix cache verify" in lines[0], r.output


def test_identical_bytes_with_conflicting_labels_are_recorded_and_warned(demo_images, tiny_backbone, tmp_path,
                                                                         caplog):
    from click.testing import CliRunner

    from natix.cli import cli

    data = _copy_images(demo_images, tmp_path / "data")
    lines = (data / "labels.csv").read_text().splitlines()
    name, label = lines[3].split(",")
    shutil.copy(data / name, data / "copy.jpg")
    (data / "labels.csv").write_text("\n".join([*lines, f"copy.jpg,{1 - int(label)}"]) + "\n")
    kwargs = dict(recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    with caplog.at_level("WARNING", logger="natix.extract.extractor"):
        r = extract(data, str(tiny_backbone), **kwargs)
    assert r.conflicts == 1 and r.extracted == 12
    assert any("conflicting labels" in m and "copy.jpg" in m and "held out of every split" in m
               for m in caplog.messages), caplog.messages
    image_id = hashlib.sha256((data / name).read_bytes()).hexdigest()
    with open_cache(r.cache_file) as c:  # every listing, in the source's order (copy.jpg sorts first)
        assert c.conflicts == [{"id": image_id, "path": str(data / "copy.jpg"), "label": 1 - int(label)},
                               {"id": image_id, "path": str(data / name), "label": int(label)}]
    assert verify_cache(r.cache_file)["ok"]
    info = CliRunner().invoke(cli, ["cache", "info", str(r.cache_file)])
    assert info.exit_code == 0 and "conflicts    1 image listed with conflicting labels" in info.output
    assert f"copy.jpg ({1 - int(label)})" in info.output
    from natix.heads.runs import load_dataset

    assert load_dataset(r.cache_file).held_out == {image_id}
    inode = r.cache_file.stat().st_ino
    again = extract(data, str(tiny_backbone), **kwargs)  # the same listing: nothing to rewrite
    assert again.conflicts == 1 and r.cache_file.stat().st_ino == inode
    (data / "labels.csv").write_text("\n".join([*lines, f"copy.jpg,{label}"]) + "\n")  # fixed in the source
    fixed = extract(data, str(tiny_backbone), **kwargs)
    assert fixed.conflicts == 0 and open_cache(r.cache_file).conflicts == []
    assert load_dataset(r.cache_file).held_out == frozenset()


def test_images_in_source_counts_unreadable_files_on_every_run(demo_images, tiny_backbone, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(demo_images, data)
    (data / "labels.csv").unlink()
    shutil.copy(demo_images / "img_00001.jpg", os.fsdecode(bytes(data) + b"/bad\xff.jpg"))
    import natix.extract.extractor as ex

    real = ex.hash_files

    def unreadable(paths, **kw):
        return [PermissionError(13, "Permission denied") if Path(p).name == "img_00005.jpg" else h
                for p, h in zip(paths, real(paths, **kw))]

    monkeypatch.setattr(ex, "hash_files", unreadable)
    kwargs = dict(recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    first = extract(data, str(tiny_backbone), **kwargs)
    again = extract(data, str(tiny_backbone), **kwargs)
    assert first.images == again.images == 13  # 11 decodable, one unreadable, one name that is not UTF-8
    assert (first.extracted, again.extracted) == (11, 0)
    assert first.failed == again.failed == 2


def _tree(root):
    """Every entry under `root` with what a write would change."""
    return {p.relative_to(root): (p.is_dir(), p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*"))}


def test_a_no_work_extract_runs_on_a_read_only_cache_directory(demo_images, tiny_backbone, tmp_path, monkeypatch):
    import natix.cache.writer as writer_module
    from natix.extract.featurizer import Featurizer

    data = _copy_images(demo_images, tmp_path / "data")
    (data / "labels.csv").unlink()
    extra = data / "img_00011.jpg"
    extra.rename(tmp_path / "later.jpg")
    kwargs = dict(recipe=ViewRecipe(n_views=1), cache_root=tmp_path / "c", options=FAST)
    extract(data, str(tiny_backbone), **kwargs)
    (tmp_path / "c" / "other.parts").mkdir()  # another cache's leftovers are not ours to touch
    before = _tree(tmp_path / "c")
    # A read-only folder (root can write anywhere, so the probe is what says so); any write shows in the tree.
    monkeypatch.setattr(writer_module, "writable_problem", lambda root: "Read-only file system")
    r = extract(data, str(tiny_backbone), **kwargs)
    assert (r.already_cached, r.extracted, r.model_work, r.verified) == (11, 0, False, True)
    assert _tree(tmp_path / "c") == before
    (tmp_path / "later.jpg").rename(extra)  # now there is work: refused before the model runs
    monkeypatch.setattr(Featurizer, "forward", lambda *a: pytest.fail("model work on a read-only cache"))
    with pytest.raises(CacheError, match=r"cache directory '.*' is not writable \(Read-only file system\): pass "
                                         r"--cache DIR"):
        extract(data, str(tiny_backbone), **kwargs)
    assert _tree(tmp_path / "c") == before


def test_a_file_too_large_for_any_image_is_a_failure_without_being_read(demo_images, tiny_backbone, tmp_path,
                                                                        cache_root, monkeypatch):
    from natix.data.decode import max_file_bytes

    data = _copy_images(demo_images, tmp_path / "data")
    with open(data / "img_00000.jpg", "r+b") as fh:  # sparse: no disk is used
        fh.truncate(max_file_bytes() + 1)
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read whole")
                        if self.stat().st_size > max_file_bytes() else read_bytes(self))
    r = extract(data, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert (r.extracted, r.failed) == (11, 1)
    [failure] = open_cache(r.cache_file).failures
    assert Path(failure["path"]).name == "img_00000.jpg" and "bytes" in failure["reason"]


def test_manifest_paths_outside_its_folder_need_allow_outside(demo_images, tiny_backbone, tmp_path, cache_root):
    from natix.errors import ConfigError

    images = _copy_images(demo_images, tmp_path / "images")
    (tmp_path / "lists").mkdir()
    rows = (images / "labels.csv").read_text().splitlines()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text("\n".join([rows[0]] + [f"../images/{line}" for line in rows[1:]]) + "\n")
    with pytest.raises((ConfigError, DataError), match="outside"):
        extract(manifest, str(tiny_backbone), cache_root=cache_root, options=FAST)
    assert not cache_root.exists() or not any(cache_root.glob("*.h5"))
    r = extract(manifest, str(tiny_backbone), cache_root=cache_root, options=FAST, allow_outside=True)
    assert r.extracted == 12
