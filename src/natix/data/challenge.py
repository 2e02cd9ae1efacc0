"""Challenge recipes: the image → image transforms the NATIX validator applied before sending an image.

A recipe turns one decoded image into what a miner would have received, deterministically::

    recipe = challenge_recipe("validator-e1", seed=0)
    params = recipe.params(image.shape[:2], image_id, draw)    # JSON: level, angle, crop box, strengths ...
    pixels = recipe.apply(image, params)                        # uint8 [224, 224, 3], after the JPEG round trip
    pixels, params = recipe.draw(image, image_id, draw)         # the two at once

Recipes (registered in `CHALLENGES`, one per era of the validator's code):

- ``validator-e1`` (to 2026-04): level uniform in 0–3. Level 0: centre square, Pillow bilinear to
  224. Levels 1–3: rotation by U(−20°, 20°) at full resolution (nearest, black corners), a square
  ``RandomResizedCrop`` (scale 0.2–1) resized to 224 with antialiasing; no flips (the validator's
  flips never fire). Level 2 adds saturation, brightness and down/up-sampling, each with
  probability ½ at strength 1; level 3 adds those and Gaussian noise and blur, each at strength
  0, 1 or 2 with probability ⅓.
- ``validator-e2`` (2026-04): the whole image letterboxed to 224×224 (black bars) at every level,
  then the same rotation (at 224) and distortions; no crop.
- ``native`` (2026-05): the image itself as a quality-75 JPEG.
- ``clean``: the image unchanged (sent as PNG).

Every validator image is a Pillow quality-75 (4:2:0) JPEG, decoded here with natix's own decoder
(:func:`natix.data.decode.decode_image`, as serving decodes). The parameters of a draw depend only
on the recipe name, its seed, the image id, the draw index and the image size; the pixels equal
the validator's library calls bit for bit (see :mod:`natix.data.distortions`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np

from natix.data import distortions as D
from natix.errors import ConfigError, DataError
from natix.jsonio import canonical
from natix.registry import Registry

__all__ = ["CHALLENGES", "VERSION", "ChallengeRecipe", "challenge_recipe", "encode_jpeg", "register_challenge"]

VERSION = 1  # bump when any recipe's output for the same params changes
SIZE = 224  # the validator's TARGET_IMAGE_SIZE
JPEG_QUALITY, JPEG_SUBSAMPLING = 75, "4:2:0"  # Pillow's defaults, which the validator's save() used
LEVELS = 4  # drawn uniformly
ROTATION_DEGREES = 20.0
CROP_SCALE, CROP_RATIO, CROP_TRIES = (0.2, 1.0), (1.0, 1.0), 10
# Per level: the distortions drawn (in the validator's order) and the largest strength drawn for each.
LEVEL_DISTORTIONS = {2: (("saturation", "brightness", "down_up"), 1), 3: (tuple(D.DISTORTIONS), 2)}

CHALLENGES = Registry("challenge recipe", hint=" (challenge recipes of natix.data.challenge)")
register_challenge = CHALLENGES.register


def challenge_recipe(name: str, seed: int = 0) -> ChallengeRecipe:
    """The registered recipe `name` with `seed`; an unknown name raises `ConfigError` listing the valid ones."""
    return CHALLENGES.create(name, seed=seed)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """The validator's ``image.save(buf, format="JPEG")``: Pillow, quality 75, 4:2:0, baseline."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


@dataclass(frozen=True)
class ChallengeRecipe:
    """A registered image → image transform with seeded, replayable draws (see the module docstring).

    Parameters
    ----------
    seed : int >= 0; with the recipe name, the image id, the draw index and the image size it
        decides every drawn parameter
    """

    name: str = field(default="", init=False)
    seed: int = 0
    keys = ("level",)  # the keys of every params dict of this recipe

    def __post_init__(self):
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"challenge seed must be an integer >= 0, got {self.seed!r}: pass e.g. seed=0")
        object.__setattr__(self, "seed", int(self.seed))

    def identity(self) -> dict:
        """Plain JSON of everything that decides the output: name, seed, version and the recipe's settings."""
        return {"name": self.name, "seed": self.seed, "version": VERSION, **self.settings()}

    def settings(self) -> dict:
        """The recipe's output-changing settings (without name, seed, version)."""
        return {}

    def params(self, size: tuple[int, int], image_id: str, draw: int) -> dict:
        """The drawn parameters of draw `draw` of image `image_id` of ``(H, W) = size`` (JSON data;
        ``"level"`` is 0–3 for validator recipes, None otherwise)."""
        height, width = _check_size(size)
        if not isinstance(image_id, str):
            raise ConfigError(f"challenge image id must be a str, got {type(image_id).__name__}: pass the image's id")
        if isinstance(draw, bool) or not isinstance(draw, (int, np.integer)) or draw < 0:
            raise ConfigError(f"challenge draw must be an integer >= 0, got {draw!r}: pass 0, 1, ... K-1")
        key = canonical([self.name, self.seed, image_id, int(draw), height, width])
        entropy = int.from_bytes(hashlib.sha256(key).digest(), "little")
        return self.sample(np.random.default_rng(np.random.SeedSequence(entropy)), height, width)

    def sample(self, rng: np.random.Generator, height: int, width: int) -> dict:
        """Draw the parameters of one image of ``height × width`` from `rng`."""
        return {"level": None}

    def apply(self, image: np.ndarray, params: dict) -> np.ndarray:
        """Replay `params` on `image` (``[H, W, 3]`` uint8 RGB): the decoded file :meth:`render` makes."""
        from natix.data.decode import decode_image

        return decode_image(self.render(image, params))

    def render(self, image: np.ndarray, params: dict) -> bytes:
        """The file the validator would send for `image` under `params` (JPEG bytes)."""
        _check_image(image)
        return encode_jpeg(self.pixels(image, self.checked(params, image.shape[:2])))

    def pixels(self, image: np.ndarray, params: dict) -> np.ndarray:
        """The uint8 image before encoding (`params` already checked)."""
        return image

    def draw(self, image: np.ndarray, image_id: str, draw: int) -> tuple[np.ndarray, dict]:
        """``apply(image, params(image.shape[:2], image_id, draw))`` and those params."""
        _check_image(image)
        params = self.params(image.shape[:2], image_id, draw)
        return self.apply(image, params), params

    def checked(self, params: dict, size: tuple[int, int]) -> dict:
        """`params` when they are a params dict of this recipe for an image of `size`; a one-line error otherwise."""
        if not isinstance(params, dict) or set(params) != set(self.keys):
            got = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ConfigError(f"params for challenge recipe '{self.name}' must have exactly the keys "
                              f"{', '.join(self.keys)}; got {got}: pass a dict that params() returned")
        if params["level"] is not None:
            raise ConfigError(f"params level must be None for challenge recipe '{self.name}', got "
                              f"{params['level']!r}: pass a dict that params() returned")
        return params


@register_challenge("clean")
@dataclass(frozen=True)
class Clean(ChallengeRecipe):
    """The image unchanged; its file is a PNG."""

    name: str = field(default="clean", init=False)

    def settings(self) -> dict:
        return {"format": "png"}

    def apply(self, image: np.ndarray, params: dict) -> np.ndarray:
        _check_image(image)
        self.checked(params, image.shape[:2])
        return np.array(image, dtype=np.uint8, order="C")  # what decoding the lossless PNG gives back

    def render(self, image: np.ndarray, params: dict) -> bytes:
        from PIL import Image

        _check_image(image)
        self.checked(params, image.shape[:2])
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        return buf.getvalue()


@register_challenge("native")
@dataclass(frozen=True)
class Native(ChallengeRecipe):
    """The image at its own size as a quality-75 JPEG (the validator from 2026-05)."""

    name: str = field(default="native", init=False)

    def settings(self) -> dict:
        return {"jpeg": {"quality": JPEG_QUALITY, "subsampling": JPEG_SUBSAMPLING}}


@dataclass(frozen=True)
class _Validator(ChallengeRecipe):
    """What both augmenting eras share: the level, the rotation and the distortions."""

    keys = ("level", "angle", *D.DISTORTIONS, "noise_seed")

    def settings(self) -> dict:
        return {
            "size": SIZE,
            "jpeg": {"quality": JPEG_QUALITY, "subsampling": JPEG_SUBSAMPLING},
            "level_probabilities": [1.0 / LEVELS] * LEVELS,
            "rotation": {"degrees": [-ROTATION_DEGREES, ROTATION_DEGREES], "interpolation": "nearest", "fill": 0,
                         "levels": [1, 2, 3]},
            "distortions": {name: list(values) for name, (_, values) in D.DISTORTIONS.items()},
            "level_distortions": {str(lv): list(names) for lv, (names, _) in LEVEL_DISTORTIONS.items()},
            "strength_probabilities": {str(lv): 1.0 / (top + 1) for lv, (_, top) in LEVEL_DISTORTIONS.items()},
            "quantize": "truncate",
        }

    def sample(self, rng: np.random.Generator, height: int, width: int) -> dict:
        level = int(rng.integers(0, LEVELS))
        params = {"level": level, "angle": None, **dict.fromkeys(D.DISTORTIONS, 0), "noise_seed": None}
        if level >= 1:
            params["angle"] = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
        return params

    def sample_distortions(self, rng: np.random.Generator, params: dict) -> dict:
        """Draw the distortion strengths of `params`'s level into `params` (after the geometry)."""
        names, top = LEVEL_DISTORTIONS.get(params["level"], ((), 0))
        for name in names:
            params[name] = int(rng.integers(0, top + 1))
        if params["noise"]:
            params["noise_seed"] = int(rng.integers(0, 2**63))
        return params

    def checked(self, params: dict, size: tuple[int, int]) -> dict:
        if not isinstance(params, dict) or set(params) != set(self.keys):
            return super().checked(params, size)  # the key error
        level, angle = params["level"], params["angle"]
        if not _is_int(level, 0, LEVELS - 1):
            _bad(self, "level", level, "0, 1, 2 or 3")
        degrees = isinstance(angle, (int, float)) and not isinstance(angle, bool) \
            and -ROTATION_DEGREES <= angle <= ROTATION_DEGREES
        if (level == 0 and angle is not None) or (level > 0 and not degrees):
            _bad(self, "angle", angle, f"None at level 0, degrees in [-{ROTATION_DEGREES:g}, {ROTATION_DEGREES:g}] else")
        names, top = LEVEL_DISTORTIONS.get(level, ((), 0))
        for name in D.DISTORTIONS:
            most = top if name in names else 0
            if not _is_int(params[name], 0, most):
                _bad(self, name, params[name], f"a strength 0..{most} at level {level}")
        seed = params["noise_seed"]
        if (params["noise"] == 0 and seed is not None) or (params["noise"] > 0 and not _is_int(seed, 0, 2**64 - 1)):
            _bad(self, "noise_seed", seed, "an int >= 0 when noise is on, None otherwise")
        return params

    def finish(self, pixels: np.ndarray, params: dict) -> np.ndarray:
        """The distortions of `params` on a uint8 224×224 image."""
        return D.distort(pixels, params, params["noise_seed"])


@register_challenge("validator-e1")
@dataclass(frozen=True)
class ValidatorE1(_Validator):
    """The validator to 2026-04: centre crop (level 0) or rotation + random resized crop, then distortions."""

    name: str = field(default="validator-e1", init=False)
    keys = ("level", "angle", "crop", *D.DISTORTIONS, "noise_seed")

    def settings(self) -> dict:
        return {**super().settings(), "level0": {"crop": "centre square", "resize": "pillow bilinear"},
                "crop": {"scale": list(CROP_SCALE), "ratio": list(CROP_RATIO), "tries": CROP_TRIES,
                         "resize": "torch bilinear antialias", "levels": [1, 2, 3]}}

    def sample(self, rng: np.random.Generator, height: int, width: int) -> dict:
        params = super().sample(rng, height, width)
        if params["level"] == 0:
            box = D.centre_square(height, width)
        else:
            box = D.random_resized_crop_box(height, width, rng, scale=CROP_SCALE, ratio=CROP_RATIO, tries=CROP_TRIES)
        params["crop"] = list(box)
        return self.sample_distortions(rng, params)

    def checked(self, params: dict, size: tuple[int, int]) -> dict:
        params = super().checked(params, size)
        crop = params["crop"]
        ok = isinstance(crop, (list, tuple)) and len(crop) == 4 and all(_is_int(v, 0, 2**31) for v in crop)
        if not ok or min(crop[2:]) < 1 or crop[0] + crop[2] > size[0] or crop[1] + crop[3] > size[1]:
            raise ConfigError(f"params crop {crop!r} is no [top, left, height, width] box inside a {size[1]}x{size[0]} "
                              "image: replay params on the image they were drawn for")
        return params

    def pixels(self, image: np.ndarray, params: dict) -> np.ndarray:
        top, left, h, w = params["crop"]
        if params["level"] == 0:
            return D.resize_bilinear(np.ascontiguousarray(image[top:top + h, left:left + w]), SIZE, SIZE)
        window = D.rotate_nearest(image, params["angle"], (top, left, h, w))
        return self.finish(D.quantize(D.resize_antialias(window, SIZE)), params)


@register_challenge("validator-e2")
@dataclass(frozen=True)
class ValidatorE2(_Validator):
    """The validator of 2026-04: letterbox to 224 at every level, then rotation and distortions."""

    name: str = field(default="validator-e2", init=False)

    def settings(self) -> dict:
        return {**super().settings(), "letterbox": {"resize": "pillow bilinear", "sizes": "truncated", "fill": 0}}

    def sample(self, rng: np.random.Generator, height: int, width: int) -> dict:
        return self.sample_distortions(rng, super().sample(rng, height, width))

    def pixels(self, image: np.ndarray, params: dict) -> np.ndarray:
        try:
            boxed = D.letterbox(image, SIZE)
        except ValueError as exc:
            raise DataError(f"{exc}: validator-e2 cannot letterbox it; leave such images out") from None
        if params["level"] == 0:
            return boxed
        return self.finish(D.rotate_nearest(boxed, params["angle"]), params)


def _bad(recipe: ChallengeRecipe, key: str, value, want: str):
    raise ConfigError(f"params {key}={value!r} is invalid for challenge recipe '{recipe.name}' (want {want}): "
                      "pass a dict that params() returned")


def _is_int(value, lo: int, hi: int) -> bool:
    """`value` is an int (not a bool) in ``[lo, hi]``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and lo <= value <= hi


def _check_size(size) -> tuple[int, int]:
    """``(H, W)`` as ints >= 1, or a one-line ConfigError."""
    try:
        height, width = (int(v) for v in size)
        ok = all(float(v) == int(v) for v in size) and height >= 1 and width >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"challenge image size must be (height, width) of ints >= 1, got {size!r}: "
                          "pass image.shape[:2]")
    return height, width


def _check_image(image) -> None:
    """A one-line DataError unless `image` is an ``[H, W, 3]`` uint8 array with pixels."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 \
            or image.shape[0] < 1 or image.shape[1] < 1:
        what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"a challenge needs an [H, W, 3] uint8 RGB image, got a {what}: "
                        "decode it with natix.data.decode.decode_image")
