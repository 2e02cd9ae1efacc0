"""The image operations of the NATIX validator's challenges, reproduced pixel for pixel.

The validator builds a challenge with torchvision (rotation, random resized crop), Pillow
(centre crop, letterbox, JPEG) and OpenCV (the distortions). Each function here computes what
that library call returns, on ``[H, W, 3]`` uint8 RGB arrays, without the full-frame work the
validator does:

- :func:`rotate_nearest` samples only the window a crop will keep, with torchvision's float32
  sampling grid (``rotate`` on a float tensor: ``grid_sample``, nearest, zeros outside), so the
  window equals the same window of the fully rotated frame;
- :func:`resize_antialias` is the resize of ``F.resized_crop(..., antialias=True)`` on the float
  tensor (torch's own kernel, on the window only); :func:`quantize` is the validator's
  ``(x * 255).astype(uint8)`` truncation;
- :func:`saturate`, :func:`brighten`, :func:`down_up`, :func:`gaussian_noise` and
  :func:`gaussian_blur` are the OpenCV-based distortions in numpy: float32 colour conversions
  with OpenCV's fused multiply-adds, its fixed-point bilinear resize and its fixed-point
  (bit-exact) Gaussian blur. They were checked against OpenCV 4.12 on 224×224 inputs, the only
  size the challenges distort.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["DISTORTIONS", "brighten", "centre_square", "distort", "down_up", "gaussian_blur", "gaussian_noise",
           "letterbox", "letterbox_box", "quantize", "random_resized_crop_box", "resize_antialias", "resize_bilinear",
           "rotate_nearest", "saturate"]

_F32 = np.float32
_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: bilinear weights in 1/2048
_BLUR_BITS = 8  # OpenCV's ufixedpoint16: Gaussian taps in 1/256


# ----------------------------------------------------------------------------- geometry


def centre_square(height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, side, side)`` of torchvision's ``CenterCrop(min(H, W))`` (Python rounding, half to even)."""
    side = min(height, width)
    return int(round((height - side) / 2.0)), int(round((width - side) / 2.0)), side, side


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's ``resize((width, height), BILINEAR)`` (antialiased when shrinking), as torchvision calls it
    on a PIL image; same-size input is returned unchanged, as torchvision does."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(top, left, new_h, new_w)`` of the validator's letterbox: the scale that fits the longer side,
    sizes truncated (``int(W * scale)``), padding split with the odd pixel at the bottom/right."""
    scale = min(size / width, size / height)
    new_w, new_h = int(width * scale), int(height * scale)
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """The whole image resized to fit ``size × size`` (Pillow bilinear) on a black, centred canvas.

    Raises ValueError when one side would shrink to nothing (an image over `size` times longer than wide).
    """
    top, left, new_h, new_w = letterbox_box(*image.shape[:2], size)
    if new_h < 1 or new_w < 1:
        raise ValueError(f"a {image.shape[1]}x{image.shape[0]} image letterboxes to {new_w}x{new_h}")
    out = np.zeros((size, size, 3), np.uint8)
    out[top:top + new_h, left:left + new_w] = resize_bilinear(image, new_h, new_w)
    return out


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator, *, scale: tuple[float, float],
                            ratio: tuple[float, float], tries: int = 10) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` by torchvision's ``RandomResizedCrop.get_params`` rule, drawn from `rng`.

    Up to `tries` times: area fraction ``U(scale)``, log aspect ratio ``U(log ratio)``, sides rounded
    (half to even); the first box that fits is placed uniformly. Otherwise the fallback: the
    largest centred box of the nearest allowed ratio (floor-centred, unlike ``CenterCrop``).
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(tries):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def rotate_nearest(image: np.ndarray, angle: float, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The `box` ``(top, left, h, w)`` window of torchvision's ``rotate(tensor, angle)`` (nearest, about the
    centre, same canvas, black outside), ``[h, w, 3]`` uint8; the whole frame when `box` is None.

    torchvision maps each output pixel back through a float32 affine grid and ``grid_sample``
    rounds the source coordinate half to even; nearest sampling only copies pixels, so sampling
    the window alone gives exactly the window of the full rotation.
    """
    height, width = image.shape[:2]
    top, left, h, w = box if box is not None else (0, 0, height, width)
    rot = math.radians(-angle)  # torchvision inverts the angle for tensors
    cos, sin = _F32(math.cos(rot)), _F32(math.sin(rot))
    half_w, half_h = _F32(0.5 * width), _F32(0.5 * height)
    # The base grid holds pixel centres relative to the image centre (exact in float32); theta is
    # divided by the half sizes first, then the grid is multiplied in float32, as _gen_affine_grid does.
    x = np.arange(left, left + w, dtype=_F32) - _F32(width * 0.5 - 0.5)
    y = (np.arange(top, top + h, dtype=_F32) - _F32(height * 0.5 - 0.5))[:, None]
    ix, in_x = _source_index(x * (cos / half_w), y * (sin / half_w), half_w, width)
    iy, in_y = _source_index(x * (-sin / half_h), y * (cos / half_h), half_h, height)
    inside = in_x & in_y
    iy *= width
    iy += ix
    np.copyto(iy, 0, where=~inside)
    out = np.take(image.reshape(-1, 3), iy, axis=0)  # take: several times faster than fancy indexing
    out[~inside] = 0
    return out


def _source_index(a: np.ndarray, b: np.ndarray, half: np.float32, size: int) -> tuple[np.ndarray, np.ndarray]:
    """grid_sample's nearest source index along one axis from the grid ``a + b`` (float32, in place),
    as int32, and whether it falls inside ``[0, size)``."""
    g = a + b
    g += _F32(1)  # unnormalise (align_corners=False): ((g + 1) * half - 0.5), rounded half to even
    g *= half
    g -= _F32(0.5)
    np.rint(g, out=g)
    index = g.astype(np.int32)
    return index, index.view(np.uint32) < size  # a negative index wraps to a huge unsigned one


def resize_antialias(window: np.ndarray, size: int) -> np.ndarray:
    """torchvision's antialiased bilinear resize of ``window / 255`` (float32) to ``size × size``,
    ``[size, size, 3]`` float32, as torch 2.5–2.6 computes it on CPU (the validator's versions).

    Rows first, then columns; each output is ``x0 * w0`` then a float32 fused multiply-add per
    further tap, with torch's float32 triangle-filter weights. A window already that size is
    returned as floats unchanged (torchvision skips the resize).
    """
    unit = window.astype(_F32) / _F32(255)  # ToTensor
    if window.shape[:2] == (size, size):
        return unit
    idx, weights = _aa_taps(window.shape[1], size)
    rows = _aa_pass(unit, idx, weights, axis=1)
    idx, weights = _aa_taps(window.shape[0], size)
    return _aa_pass(rows, idx, weights, axis=0)


@functools.lru_cache(maxsize=4096)
def _aa_taps(insize: int, outsize: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices ``[out, T]`` and normalised float32 weights ``[out, T]`` (0 past each output's
    taps) of torch's antialiased bilinear filter along one axis, in torch's float32 steps."""
    scale = _F32(insize) / _F32(outsize)
    support = scale if scale >= 1 else _F32(1)
    invscale = np.float64(_F32(1.0 / np.float64(scale))) if scale >= 1 else np.float64(1)
    centre = (np.float64(scale) * (np.arange(outsize) + 0.5)).astype(_F32)
    lo = np.maximum(((centre - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    count = np.minimum(((centre + support).astype(np.float64) + 0.5).astype(np.int64), insize) - lo
    taps = int(count.max())
    j = np.arange(taps)
    offset = (lo[:, None] + j).astype(_F32) - centre[:, None]  # int - float in float32
    dist = np.abs(((offset.astype(np.float64) + 0.5) * invscale).astype(_F32))
    weights = np.where((dist < 1) & (j < count[:, None]), _F32(1) - dist, _F32(0))
    total = np.zeros(outsize, _F32)
    for k in range(taps):  # torch sums the weights in order, in float32
        total = total + weights[:, k]
    weights = np.where(total[:, None] != 0, weights / np.where(total == 0, _F32(1), total)[:, None], weights)
    return np.minimum(lo[:, None] + j, insize - 1), weights.astype(_F32)


def _aa_pass(x: np.ndarray, idx: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One separable pass along `axis` of ``[H, W, 3]`` float32: sequential float32 FMAs per output."""
    x64 = x.astype(np.float64)  # float32 values, exactly; converted once rather than per tap
    w64 = weights.astype(np.float64)
    shape = (1, -1, 1) if axis == 1 else (-1, 1, 1)
    acc = (np.take(x64, idx[:, 0], axis=axis) * w64[:, 0].reshape(shape)).astype(_F32)  # the float32 product
    for k in range(1, idx.shape[1]):
        # An exact float64 product plus one rounding to float32 is the fused multiply-add.
        tap = np.take(x64, idx[:, k], axis=axis)
        tap *= w64[:, k].reshape(shape)
        tap += acc
        acc = tap.astype(_F32)
    return acc


def quantize(unit: np.ndarray) -> np.ndarray:
    """The validator's float → uint8 step, ``(x * 255).astype(uint8)``: truncation, not rounding."""
    return (unit * _F32(255)).astype(np.uint8)


# ----------------------------------------------------------------------------- distortions


def _fma(a, b, c) -> np.ndarray:
    """float32 fused multiply-add (exact product, one rounding), as OpenCV's SIMD colour code computes."""
    return (np.asarray(a, np.float64) * np.float64(b) + np.asarray(c, np.float64)).astype(_F32)


def _to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """The validator's ``bgr2ycbcr``: OpenCV's float YCrCb of 0–255 values (chroma offset 0.5, as
    for 0–1 floats), then studio-range scaled; channels Y, Cb, Cr."""
    r, g, b = (rgb[..., k].astype(_F32) for k in range(3))
    y = _fma(b, _F32(0.114), _fma(g, _F32(0.587), r * _F32(0.299)))
    cr = _fma(r - y, _F32(0.713), _F32(0.5))
    cb = _fma(b - y, _F32(0.564), _F32(0.5))
    return np.stack([(y * _F32(219) + _F32(16)) / _F32(255),
                     (cb * _F32(224) + _F32(16)) / _F32(255),
                     (cr * _F32(224) + _F32(16)) / _F32(255)], axis=-1)


def _from_ycbcr(ycc: np.ndarray) -> np.ndarray:
    """The validator's ``ycbcr2bgr`` inverse, as float32 RGB (unclipped)."""
    ycc = ycc.astype(_F32)
    y = (ycc[..., 0] * _F32(255) - _F32(16)) / _F32(219)
    cb = (ycc[..., 1] * _F32(255) - _F32(16)) / _F32(224) - _F32(0.5)
    cr = (ycc[..., 2] * _F32(255) - _F32(16)) / _F32(224) - _F32(0.5)
    return np.stack([_fma(cr, _F32(1.403), y),
                     _fma(cr, _F32(-0.714), _fma(cb, _F32(-0.344), y)),
                     _fma(cb, _F32(1.773), y)], axis=-1)


def saturate(rgb: np.ndarray, factor: float) -> np.ndarray:
    """Chroma scaled by `factor` about 0.5 in the validator's YCbCr, truncated to uint8 (unclipped:
    the values stay within [-0.003, 255])."""
    ycc = _to_ycbcr(rgb)
    ycc[..., 1:] = _F32(0.5) + (ycc[..., 1:] - _F32(0.5)) * _F32(factor)
    return _from_ycbcr(ycc).astype(np.uint8)


def brighten(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The validator's "contrast": ``(x.astype(float32) * factor).astype(uint8)``."""
    return (rgb.astype(_F32) * _F32(factor)).astype(np.uint8)


def gaussian_noise(rgb: np.ndarray, variance: float, normal: np.ndarray) -> np.ndarray:
    """``sqrt(variance) * normal`` added in the validator's YCbCr scaled to 1/255, clipped, truncated.

    `normal` is ``[H, W, 3]`` float64 standard normal noise, channels in Y, Cb, Cr order.
    """
    ycc = _to_ycbcr(rgb) / _F32(255)
    noisy = (ycc + math.sqrt(variance) * normal) * 255  # float64, as numpy promotes it there
    return np.clip(_from_ycbcr(noisy), 0, 255).astype(np.uint8)


def _linear_taps(src: int, dst: int, clamp: bool):
    """OpenCV INTER_LINEAR source indices and 1/2048 weights along one axis.

    Columns clamp at the borders (weight 0 outside); rows keep their fractional weights and read
    the clamped edge row twice, as OpenCV's vertical pass does.
    """
    f = ((np.arange(dst) + 0.5) * (1.0 / (dst / src)) - 0.5).astype(_F32)
    s = np.floor(f).astype(np.intp)
    f = f - s.astype(_F32)
    if clamp:
        f[(s < 0) | (s >= src - 1)] = 0
    w0 = np.rint((_F32(1) - f) * _F32(1 << _COEF_BITS)).astype(np.int64)
    w1 = np.rint(f * _F32(1 << _COEF_BITS)).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def _cv_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(image, (width, height))`` (INTER_LINEAR) on uint8, OpenCV's fixed-point arithmetic.

    An exact halving is a 2×2 box average (OpenCV switches to INTER_AREA there).
    """
    h, w = image.shape[:2]
    src = image.astype(np.int32)
    if (h, w) == (2 * height, 2 * width):
        return ((src[0::2, 0::2] + src[0::2, 1::2] + src[1::2, 0::2] + src[1::2, 1::2] + 2) >> 2).astype(np.uint8)
    c0, c1, a0, a1 = _linear_taps(w, width, clamp=True)
    rows = src[:, c0] * a0[:, None] + src[:, c1] * a1[:, None]  # exact ints, < 2^20
    r0, r1, b0, b1 = _linear_taps(h, height, clamp=False)
    # The vertical pass of OpenCV's SIMD code: 16-bit high products of (row >> 4) and the weight.
    top = ((rows[r0] >> 4) * b0[:, None, None]) >> 16
    bottom = ((rows[r1] >> 4) * b1[:, None, None]) >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)


def down_up(rgb: np.ndarray, factor: int) -> np.ndarray:
    """The validator's "JPEG" distortion: OpenCV bilinear down to ``size // factor`` and back up."""
    h, w = rgb.shape[:2]
    return _cv_resize(_cv_resize(rgb, h // factor, w // factor), h, w)


def _gaussian_taps(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV's 8-bit Gaussian kernel: the normalised Gaussian rounded to 1/256 with error
    diffusion from the outside in, the centre tap taking the rest so the taps sum to 256."""
    half = ksize // 2
    values = [math.exp((1 - ksize + 2 * i) ** 2 * (-0.125 / (sigma * sigma))) for i in range(half)]
    norm = 1.0 / (2 * sum(values) + 1)
    taps, err = [0] * ksize, 0.0
    for i, v in enumerate(values):
        adj = v * norm * (1 << _BLUR_BITS) + err
        taps[i] = taps[-1 - i] = round(adj)
        err = adj - taps[i]
    taps[half] = (1 << _BLUR_BITS) - 2 * sum(taps[:half])
    return np.array(taps, np.int64)


def gaussian_blur(rgb: np.ndarray, ksize: int) -> np.ndarray:
    """``cv2.GaussianBlur(x, (k, k), k / 6)`` on uint8: separable 1/256 taps, reflect-101 borders,
    one rounding of the 1/65536 sum."""
    taps = _gaussian_taps(ksize, ksize / 6)
    h, w = rgb.shape[:2]
    r = ksize // 2
    padded = rgb[_reflect101(h, r)][:, _reflect101(w, r)].astype(np.int64)
    rows = sum(padded[:, k:k + w] * t for k, t in enumerate(taps))
    total = sum(rows[k:k + h] * t for k, t in enumerate(taps))
    return ((total + (1 << (2 * _BLUR_BITS - 1))) >> (2 * _BLUR_BITS)).astype(np.uint8)


def _reflect101(n: int, r: int) -> np.ndarray:
    """Indices ``-r .. n + r - 1`` reflected about the edge pixels (``gfedcb|abcdefgh|gfedcba``)."""
    if n == 1:
        return np.zeros(n + 2 * r, np.intp)
    idx = np.abs(np.arange(-r, n + r)) % (2 * n - 2)
    return np.where(idx >= n, 2 * n - 2 - idx, idx)


# The validator's distortions in the order it applies them, each with its parameter at strengths 1 and 2.
DISTORTIONS: dict[str, tuple] = {
    "saturation": (saturate, (0.4, 0.3)),
    "brightness": (brighten, (0.85, 0.725)),
    "down_up": (down_up, (2, 3)),
    "noise": (gaussian_noise, (0.001, 0.002)),
    "blur": (gaussian_blur, (7, 9)),
}


def distort(image: np.ndarray, strengths: dict[str, int], noise_seed: int | None) -> np.ndarray:
    """Apply each distortion of `strengths` (name → 0, 1 or 2; 0 = off) in the validator's order.

    The validator converts to uint8 (truncating) before each distortion and back to x/255 after;
    k/255 · 255 truncates back to k for every k, so staying in uint8 between them is exact. The
    noise is ``default_rng(noise_seed).standard_normal((H, W, 3))``.
    """
    out = image
    for name, (fn, params) in DISTORTIONS.items():
        strength = strengths[name]
        if not strength:
            continue
        if name == "noise":
            normal = np.random.default_rng(noise_seed).standard_normal(out.shape)
            out = fn(out, params[strength - 1], normal)
        else:
            out = fn(out, params[strength - 1])
    return out
