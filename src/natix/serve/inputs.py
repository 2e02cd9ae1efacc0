"""What a bundle accepts as images: paths, encoded bytes, PIL images and ``[H, W, 3]`` uint8 arrays.

Each is decoded as `natix extract` decodes files (:mod:`natix.data.decode`), so an image passed
in any of these forms gives the same features.

A PIL image belongs to the caller, who may share it between threads, and PIL decodes lazily: the
first ``load()`` reads the file into the object itself, which is not safe from two threads at
once. So a PIL image is read under a lock, one at a time, into a private array, and anything PIL
raises on it (whatever state the caller's object is in) fails that image only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np

from natix.data.decode import decode_image, decode_pil, read_image
from natix.errors import DataError, DecodeError

__all__ = ["as_list", "check_input", "decode", "describe"]

_ENCODED = (bytes, bytearray, memoryview)
_CALLERS_PIL = threading.Lock()  # guards the caller's PIL objects, which PIL's lazy load() mutates


def _is_pil(item) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image)


def decode(item) -> np.ndarray:
    """One input → ``[H, W, 3]`` uint8, as the extractor decodes files; raises DecodeError per image."""
    if isinstance(item, (str, os.PathLike)):
        try:
            data = read_image(item)
        except OSError as exc:
            raise DecodeError(f"cannot read file: {exc.strerror or exc}") from None
        return decode_image(data)
    if isinstance(item, _ENCODED):
        return decode_image(bytes(item))
    if isinstance(item, np.ndarray):
        # torch.from_numpy wants positive strides and a writable buffer
        return item if item.flags.c_contiguous and item.flags.writeable else np.array(item, order="C")
    return _decode_callers_pil(item)


def _decode_callers_pil(im) -> np.ndarray:
    """A private ``[H, W, 3]`` uint8 copy of the caller's PIL image, read under the lock."""
    with _CALLERS_PIL:
        try:
            return decode_pil(im)
        except DecodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a caller's object in any state is one bad image, not a failed call
            raise DecodeError(f"PIL cannot read this image ({type(exc).__name__}: {exc})") from None


def check_input(i: int, item) -> None:
    """Refuse what is no image at all (a caller's bug, not a bad image)."""
    if isinstance(item, (str, os.PathLike, *_ENCODED)) or _is_pil(item):
        return
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3 or 0 in item.shape:
            raise DataError(f"image {i} is an array of shape {item.shape} and dtype {item.dtype}: pass "
                            "[H, W, 3] uint8 RGB")
        return
    raise DataError(f"image {i} is a {type(item).__name__}: pass a path, bytes, a PIL image or an [H, W, 3] "
                    "uint8 array")


def describe(item) -> str:
    """A short name of an input for messages: the path, the byte count or the type."""
    if isinstance(item, (str, os.PathLike)):
        return f"'{item}'"
    if isinstance(item, _ENCODED):
        return f"({len(item)} bytes)"
    return f"({type(item).__name__})"


def as_list(images) -> list:
    """One image or a sequence of images → a list."""
    if isinstance(images, (str, os.PathLike, *_ENCODED)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images)
    if _is_pil(images):
        return [images]
    if not isinstance(images, Sequence) and not hasattr(images, "__iter__"):
        raise DataError(f"images is a {type(images).__name__}: pass a list of paths, bytes or PIL images")
    return list(images)
