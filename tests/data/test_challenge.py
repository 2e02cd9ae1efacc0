"""Tests for the challenge recipes (`natix.data.challenge`) and their pixel operations (`natix.data.distortions`).

Reference digests (`VALIDATOR_*`) were computed by running the NATIX validator's own code (its
``image_transforms.py`` at the last commit of each era, with the library versions it pinned:
torch 2.6.0, torchvision 0.21.0, opencv-python 4.12.0.88, Pillow 10.4.0, numpy 2.2.6) on the
inputs `_image` makes, with the parameters listed; they are SHA-256 prefixes of its outputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import types

import numpy as np
import pytest
from PIL import Image

from natix.data import distortions as D
from natix.data.challenge import CHALLENGES, challenge_recipe, encode_jpeg
from natix.data.decode import decode_image
from natix.errors import ConfigError, DataError

OFF = {"angle": None, "saturation": 0, "brightness": 0, "down_up": 0, "noise": 0, "blur": 0, "noise_seed": None}

# The validator's distortion functions on `_image(224, 224, 1)` (the noise drawn as `_normal()`).
VALIDATOR_DISTORTIONS = {
    "saturation1": "242a4ac931a5c61c", "saturation2": "f40d37a350a6f263",
    "brightness1": "2c2e4cc477e6d331", "brightness2": "d35426b775ede2d1",
    "down_up1": "a1f4ae3f47aab3ac", "down_up2": "687068b4f7dd90ea",
    "noise1": "07ec9831e89c5191", "noise2": "fac32968fa1e83d2",
    "blur1": "ea0cb9abfb37ddea", "blur2": "8f6fb8dde6b96f59",
}
# The JPEG file the validator sends for `_image(h, w, 2)` with these parameters.
VALIDATOR_FILES = [
    ("validator-e1", (64, 96), {**OFF, "level": 0, "crop": [0, 16, 64, 64]}, "cd7cb84cdaeab733"),
    ("validator-e1", (97, 131), {**OFF, "level": 2, "angle": -19.5, "crop": [10, 20, 60, 60], "saturation": 1,
                                 "brightness": 1, "down_up": 1}, "68a8b1db3ac49929"),
    ("validator-e1", (1080, 1920), {**OFF, "level": 3, "angle": 13.7, "crop": [100, 400, 900, 900], "saturation": 2,
                                    "brightness": 1, "down_up": 2, "noise": 1, "blur": 2, "noise_seed": 12345},
     "76134b545a64326d"),
    ("validator-e2", (97, 131), {**OFF, "level": 3, "angle": 7.25, "saturation": 1, "brightness": 2, "down_up": 2,
                                 "noise": 2, "blur": 1, "noise_seed": 99}, "63406bb44bd031a3"),
    ("validator-e2", (64, 96), {**OFF, "level": 1, "angle": -3.5}, "db005b43dc866c04"),
    ("validator-e2", (1080, 1920), {**OFF, "level": 0}, "364929006d20b8f5"),
]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blocks of colour plus a little noise (stable across numpy versions)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 240, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return (np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:h, :w] + rng.integers(0, 16, (h, w, 3), dtype=np.uint8)).astype(
        np.uint8)


def _digest(data) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def frame():
    return _image(1080, 1920, 2)


# ----------------------------------------------------------------------------- against the validator's code


@pytest.mark.parametrize("name,size,params,digest", VALIDATOR_FILES, ids=lambda v: str(v)[:20])
def test_render_is_the_validators_file(name, size, params, digest, frame):
    image = frame if size == (1080, 1920) else _image(*size, 2)
    recipe = challenge_recipe(name)
    data = recipe.render(image, params)
    assert _digest(data) == digest
    np.testing.assert_array_equal(recipe.apply(image, params), decode_image(data))


@pytest.mark.parametrize("key", sorted(VALIDATOR_DISTORTIONS))
def test_each_distortion_is_opencvs(key):
    name, strength = key[:-1], int(key[-1])
    fn, values = D.DISTORTIONS[name]
    image = _image(224, 224, 1)
    out = fn(image, values[strength - 1], _normal()) if name == "noise" else fn(image, values[strength - 1])
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert _digest(out) == VALIDATOR_DISTORTIONS[key]


def _normal() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((224, 224, 3))


# ----------------------------------------------------------------------------- each piece, independently


def test_centre_crop_and_resize_is_torchvisions_on_pil():
    import torchvision.transforms as T

    for h, w in [(64, 96), (97, 131), (131, 97)]:
        image = _image(h, w)
        pil = Image.fromarray(image)
        expected = np.asarray(T.Resize((224, 224))(T.CenterCrop(min(pil.size))(pil)))
        recipe = challenge_recipe("validator-e1")
        params = {**OFF, "level": 0, "crop": list(D.centre_square(h, w))}
        assert recipe.params((h, w), "x", 0).keys() == params.keys()
        np.testing.assert_array_equal(recipe.pixels(image, params), expected)
    assert D.centre_square(65, 96) == (0, 16, 65, 65) and D.centre_square(96, 67) == (14, 0, 67, 67)  # half to even


@pytest.mark.parametrize("angle", [13.7, -19.99, 0.25, 7.0])
def test_rotation_window_is_torchvisions_full_rotation_cropped(angle, frame):
    import torchvision.transforms.functional as F

    for image, box in [(_image(97, 131), (5, 9, 80, 80)), (_image(64, 96), None)]:
        full = F.rotate(F.to_tensor(image), angle)  # nearest, black fill: what the validator calls
        top, left, h, w = box or (0, 0, *image.shape[:2])
        expected = np.rint(full[:, top:top + h, left:left + w].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(D.rotate_nearest(image, angle, box), expected)
    if angle == 13.7:  # one full-HD frame
        full = F.rotate(F.to_tensor(frame), angle)
        expected = np.rint(full[:, 100:1000, 400:1300].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(D.rotate_nearest(frame, angle, (100, 400, 900, 900)), expected)


class _Replay:
    """Records what a numpy Generator hands out, to feed the same numbers to torchvision."""

    def __init__(self, seed):
        self.rng, self.uniforms, self.ints = np.random.default_rng(seed), [], []

    def uniform(self, lo, hi):
        self.uniforms.append(self.rng.uniform(lo, hi))
        return self.uniforms[-1]

    def integers(self, lo, hi):
        self.ints.append(int(self.rng.integers(lo, hi)))
        return self.ints[-1]


def _torchvision_box(monkeypatch, height, width, replay, scale, ratio):
    """torchvision's own ``RandomResizedCrop.get_params`` with its torch RNG calls answered by `replay`."""
    import torch
    import torchvision.transforms.transforms as TT

    uniforms, ints = iter(replay.uniforms), iter(replay.ints)
    shim = types.SimpleNamespace(
        log=torch.log, tensor=torch.tensor, exp=torch.exp,
        empty=lambda *_: types.SimpleNamespace(uniform_=lambda lo, hi: torch.tensor([next(uniforms)], dtype=torch.float64)),
        randint=lambda lo, hi, size: torch.tensor([next(ints)]))
    monkeypatch.setattr(TT, "torch", shim)
    return TT.RandomResizedCrop.get_params(torch.empty(3, height, width), list(scale), list(ratio))


@pytest.mark.parametrize("seed", range(6))
def test_crop_box_follows_torchvisions_rule(monkeypatch, seed):
    for height, width, scale in [(1080, 1920, (0.2, 1.0)), (64, 96, (0.2, 1.0)), (1080, 1920, (0.9, 1.0)),
                                 (300, 200, (0.95, 1.0))]:
        replay = _Replay(seed)
        ours = D.random_resized_crop_box(height, width, replay, scale=scale, ratio=(1.0, 1.0))
        with monkeypatch.context() as m:
            assert ours == _torchvision_box(m, height, width, replay, scale, (1.0, 1.0))
        if scale[0] >= 0.9:  # a square of 90 % of the area never fits: the fallback, after 10 tries
            assert len(replay.uniforms) == 20 and not replay.ints
            side = min(height, width)
            assert ours == ((height - side) // 2, (width - side) // 2, side, side)


def test_antialiased_resize_is_torch_2_6s_kernel():
    """A literal scalar transcription of torch 2.6's CPU kernel (float32 weights, rows then columns,
    fused multiply-adds), on small sizes; and within float rounding of the installed torch."""
    import torch

    def taps(insize, outsize):
        scale = np.float32(insize) / np.float32(outsize)
        support = scale if scale >= 1 else np.float32(1)
        inv = np.float32(1.0 / float(scale)) if scale >= 1 else np.float32(1)
        out = []
        for i in range(outsize):
            center = np.float32(float(scale) * (i + 0.5))
            xmin = max(int(float(center - support) + 0.5), 0)
            xsize = min(int(float(center + support) + 0.5), insize) - xmin
            ws = [np.float32(max(0.0, 1 - abs(np.float32((float(np.float32(xmin + j) - center) + 0.5) * float(inv)))))
                  for j in range(xsize)]
            total = np.float32(0)
            for wt in ws:
                total = np.float32(total + wt)
            out.append((xmin, [np.float32(wt / total) for wt in ws]))
        return out

    def one_axis(x, table):
        out = np.empty((len(table),) + x.shape[1:], np.float32)
        for i, (xmin, ws) in enumerate(table):
            acc = x[xmin] * ws[0]
            for j in range(1, len(ws)):
                acc = (x[xmin + j].astype(np.float64) * float(ws[j]) + acc).astype(np.float32)
            out[i] = acc
        return out

    for h, w, size in [(40, 53, 16), (10, 13, 16), (37, 12, 16)]:
        window = _image(h, w, 3)
        unit = window.astype(np.float32) / np.float32(255)
        rows = one_axis(unit.transpose(1, 0, 2), taps(w, size)).transpose(1, 0, 2)
        np.testing.assert_array_equal(D.resize_antialias(window, size), one_axis(rows, taps(h, size)))
    window = _image(300, 300, 4)
    ref = torch.nn.functional.interpolate(torch.from_numpy(window.transpose(2, 0, 1).astype(np.float32) / 255)[None],
                                          size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    assert np.abs(D.resize_antialias(window, 224) - ref[0].permute(1, 2, 0).numpy()).max() < 1e-6


def test_quantize_truncates_and_round_trips_every_level():
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(D.quantize(levels.astype(np.float32) / np.float32(255)), levels)
    assert D.quantize(np.array([0.999, 0.5], np.float32)).tolist() == [254, 127]


@pytest.mark.parametrize("strength", [1, 2])
def test_distortion_formulas(strength):
    image = _image(224, 224, 6)
    value = {name: params[strength - 1] for name, (_, params) in D.DISTORTIONS.items()}
    # brightness: float32 product, truncated
    np.testing.assert_array_equal(D.brighten(image, value["brightness"]),
                                  np.floor(image.astype(np.float32) * np.float32(value["brightness"])).astype(np.uint8))
    # saturation: chroma scaled toward the BT.601 luma, then truncated (OpenCV's rounded coefficients
    # and the validator's chroma offset move values by up to a few hundredths)
    rgb = image.astype(np.float64)
    luma = rgb @ [0.299, 0.587, 0.114]
    formula = luma[..., None] + value["saturation"] * (rgb - luma[..., None])
    diff = formula - D.saturate(image, value["saturation"])
    assert -0.05 < diff.min() and diff.max() < 1.05 and 0.4 < diff.mean() < 0.6
    # down/up: down by 2 is the 2x2 mean (rounded half up, OpenCV's area shortcut); a flat image stays flat
    s = image.astype(np.int32)
    half = (s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2] + 2) >> 2
    np.testing.assert_array_equal(D._cv_resize(image, 112, 112), half)
    flat = np.full((224, 224, 3), 77, np.uint8)
    np.testing.assert_array_equal(D.down_up(flat, value["down_up"]), flat)
    assert D.down_up(image, value["down_up"]).shape == image.shape
    # blur: the integer 1/256 taps of OpenCV, correlated with mirrored borders, one rounding
    from scipy.ndimage import correlate1d

    taps = D._gaussian_taps(value["blur"], value["blur"] / 6)
    assert taps.sum() == 256 and (taps == taps[::-1]).all()
    total = correlate1d(correlate1d(image.astype(np.int64), taps, axis=1, mode="mirror"), taps, axis=0, mode="mirror")
    np.testing.assert_array_equal(D.gaussian_blur(image, value["blur"]), ((total + (1 << 15)) >> 16).astype(np.uint8))
    # noise: zero noise changes nothing but the validator's colour round trip; the noise has the stated spread
    quiet = D.gaussian_noise(image, value["noise"], np.zeros((224, 224, 3)))
    assert np.abs(quiet.astype(int) - image).max() <= 1
    loud = D.gaussian_noise(np.full((224, 224, 3), 128, np.uint8), value["noise"], _normal()).astype(float)
    luma_sd = (loud @ [0.299, 0.587, 0.114]).std()
    assert abs(luma_sd - 255**2 / 219 * math.sqrt(value["noise"])) < 0.5


def test_opencv_kernel_taps():
    assert D._gaussian_taps(7, 7 / 6).tolist() == [3, 20, 61, 88, 61, 20, 3]
    assert D._gaussian_taps(9, 1.5).tolist() == [2, 9, 28, 55, 68, 55, 28, 9, 2]


def test_letterbox_is_torchvisions_resize_and_pad():
    import torchvision.transforms.functional as F

    assert D.letterbox_box(1080, 1920, 224) == (49, 0, 126, 224)
    assert D.letterbox_box(720, 1280, 224) == (49, 0, 125, 224)  # int() truncates 125.99999999999999
    assert D.letterbox_box(1920, 1080, 224) == (0, 49, 224, 126)
    for h, w in [(64, 96), (97, 131), (131, 97), (224, 224)]:
        image = _image(h, w)
        top, left, nh, nw = D.letterbox_box(h, w, 224)
        expected = F.pad(F.resize(Image.fromarray(image), [nh, nw]), [left, top, 224 - nw - left, 224 - nh - top], fill=0)
        np.testing.assert_array_equal(D.letterbox(image, 224), np.asarray(expected))


def test_jpeg_round_trip_equals_pil_encode_and_decode():
    image = _image(97, 131, 7)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")  # the validator's call: every option at its default
    assert encode_jpeg(image) == buf.getvalue()
    native = challenge_recipe("native")
    out = native.apply(image, native.params(image.shape[:2], "a", 0))
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


# ----------------------------------------------------------------------------- the recipes


def _binomial_ok(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("name", ["validator-e1", "validator-e2"])
def test_level_and_strength_frequencies(name):
    recipe = challenge_recipe(name, seed=1)
    draws = [recipe.params((64, 96), f"img{k % 50}", k // 50) for k in range(4000)]
    levels = np.bincount([p["level"] for p in draws], minlength=4)
    assert all(_binomial_ok(c, 4000, 0.25) for c in levels), levels
    two = [p for p in draws if p["level"] == 2]
    three = [p for p in draws if p["level"] == 3]
    for dname in D.DISTORTIONS:
        if dname in ("saturation", "brightness", "down_up"):
            assert _binomial_ok(sum(p[dname] == 1 for p in two), len(two), 0.5)
            assert {p[dname] for p in two} == {0, 1}
        else:
            assert all(p[dname] == 0 for p in two)
        for s in (0, 1, 2):
            assert _binomial_ok(sum(p[dname] == s for p in three), len(three), 1 / 3)
    assert all(p["angle"] is None for p in draws if p["level"] == 0)
    angles = [p["angle"] for p in draws if p["level"] > 0]
    assert -20 <= min(angles) < -19 and 19 < max(angles) <= 20
    assert all((p["noise_seed"] is None) == (p["noise"] == 0) for p in draws)


def test_e1_crop_boxes_follow_the_area_rule():
    recipe = challenge_recipe("validator-e1")
    boxes = [p["crop"] for k in range(400) if (p := recipe.params((1080, 1920), str(k), 0))["level"] > 0]
    sides = np.array([b[2] for b in boxes])
    assert all(b[2] == b[3] and b[0] + b[2] <= 1080 and b[1] + b[3] <= 1920 for b in boxes)
    assert sides.min() >= round(math.sqrt(0.2 * 1080 * 1920)) and sides.max() <= 1080


@pytest.mark.parametrize("name", ["validator-e1", "validator-e2", "native", "clean"])
def test_determinism_replay_and_shapes(name):
    image = _image(64, 96, 8)
    recipe = challenge_recipe(name, seed=3)
    out, params = recipe.draw(image, "abc", 2)
    again, params2 = challenge_recipe(name, seed=3).draw(image, "abc", 2)
    assert params == params2 and np.array_equal(out, again)
    np.testing.assert_array_equal(recipe.apply(image, params), out)
    np.testing.assert_array_equal(decode_image(recipe.render(image, params)), out)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.shape == ((224, 224, 3) if name.startswith("validator") else image.shape)
    if name.startswith("validator"):
        many = [str(p) for d in range(12) if (p := recipe.params((64, 96), "abc", d))["level"] > 0]
        assert len(set(many)) == len(many) > 3  # level-0 draws alone may repeat (nothing is drawn there)
        assert recipe.params((64, 96), "abc", 2) != challenge_recipe(name, seed=4).params((64, 96), "abc", 2)
        assert recipe.params((64, 96), "abc", 2) != recipe.params((64, 96), "abd", 2)
        assert params["level"] in range(4)
        np.testing.assert_array_equal(recipe.apply(image, json.loads(json.dumps(params))), out)
    else:
        assert params == {"level": None}
    if name == "clean":
        np.testing.assert_array_equal(out, image)


def test_identity_is_stable():
    assert challenge_recipe("validator-e1", seed=5).identity() == {
        "name": "validator-e1", "seed": 5, "version": 1, "size": 224,
        "jpeg": {"quality": 75, "subsampling": "4:2:0"},
        "level_probabilities": [0.25, 0.25, 0.25, 0.25],
        "rotation": {"degrees": [-20.0, 20.0], "interpolation": "nearest", "fill": 0, "levels": [1, 2, 3]},
        "distortions": {"saturation": [0.4, 0.3], "brightness": [0.85, 0.725], "down_up": [2, 3],
                        "noise": [0.001, 0.002], "blur": [7, 9]},
        "level_distortions": {"2": ["saturation", "brightness", "down_up"],
                              "3": ["saturation", "brightness", "down_up", "noise", "blur"]},
        "strength_probabilities": {"2": 0.5, "3": 1 / 3},
        "quantize": "truncate",
        "level0": {"crop": "centre square", "resize": "pillow bilinear"},
        "crop": {"scale": [0.2, 1.0], "ratio": [1.0, 1.0], "tries": 10, "resize": "torch bilinear antialias",
                 "levels": [1, 2, 3]},
    }
    e2 = challenge_recipe("validator-e2").identity()
    assert e2["letterbox"] == {"resize": "pillow bilinear", "sizes": "truncated", "fill": 0} and "crop" not in e2
    assert challenge_recipe("native").identity() == {"name": "native", "seed": 0, "version": 1,
                                                     "jpeg": {"quality": 75, "subsampling": "4:2:0"}}
    assert challenge_recipe("clean").identity() == {"name": "clean", "seed": 0, "version": 1, "format": "png"}
    recipe = challenge_recipe("validator-e1")
    assert (recipe.name, recipe.seed) == ("validator-e1", 0) and recipe == challenge_recipe("validator-e1")
    assert set(CHALLENGES.names()) == {"clean", "native", "validator-e1", "validator-e2"}


def test_bad_inputs():
    recipe = challenge_recipe("validator-e1")
    image = _image(64, 96)
    params = recipe.params(image.shape[:2], "a", 0)
    with pytest.raises(ConfigError, match="unknown challenge recipe 'nope'.*clean, native, validator-e1"):
        challenge_recipe("nope")
    for seed in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="seed must be an integer"):
            challenge_recipe("native", seed=seed)
    for bad in (image.astype(np.float32), image[:, :, 0], image[:, :, :2], image[:0], [[1, 2, 3]]):
        with pytest.raises(DataError, match=r"\[H, W, 3\] uint8 RGB image.*decode_image"):
            recipe.draw(bad, "a", 0)
    for draw in (-1, 1.0, True):
        with pytest.raises(ConfigError, match="draw must be an integer >= 0"):
            recipe.params((64, 96), "a", draw)
    with pytest.raises(ConfigError, match="image id must be a str"):
        recipe.params((64, 96), 7, 0)
    for size in ((0, 5), (5,), "ab", (2.5, 4)):
        with pytest.raises(ConfigError, match="size must be"):
            recipe.params(size, "a", 0)
    with pytest.raises(ConfigError, match="exactly the keys.*params\\(\\) returned"):
        recipe.apply(image, {**params, "extra": 1})
    with pytest.raises(ConfigError, match="exactly the keys"):
        challenge_recipe("native").apply(image, {"level": None, "angle": 3.0})
    with pytest.raises(ConfigError, match="params level=7"):
        recipe.apply(image, {**params, "level": 7})
    with pytest.raises(ConfigError, match="params angle"):
        recipe.apply(image, {**OFF, "level": 1, "crop": [0, 0, 10, 10]})
    with pytest.raises(ConfigError, match="params blur=1"):
        recipe.apply(image, {**OFF, "level": 2, "angle": 1.0, "crop": [0, 0, 10, 10], "blur": 1})
    with pytest.raises(ConfigError, match="params noise_seed"):
        recipe.apply(image, {**OFF, "level": 3, "angle": 1.0, "crop": [0, 0, 10, 10], "noise": 1})
    with pytest.raises(ConfigError, match="crop .* inside a 96x64 image"):
        recipe.apply(image, {**OFF, "level": 1, "angle": 1.0, "crop": [0, 0, 65, 65]})
    with pytest.raises(DataError, match="cannot letterbox"):
        challenge_recipe("validator-e2").draw(np.zeros((1, 300, 3), np.uint8), "a", 0)
