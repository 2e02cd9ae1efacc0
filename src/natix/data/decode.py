"""Image decoding: bytes → RGB uint8 array, strictly.

Strict means: the whole file is decoded (a truncated JPEG is an error, never a grey-padded
image; so is a JPEG that libjpeg decodes with a corrupt-data warning, or whose scans stop
early), EXIF orientation is applied, every PIL mode becomes 3-channel 8-bit RGB with 16-bit
and float data rescaled rather than clipped, transparency is composited over white, and images
above a pixel budget are refused before their pixels are allocated (and files larger than any
image within that budget before they are read).
"""

from __future__ import annotations

import fcntl
import functools
import io
import logging
import os
import re
import tempfile
import threading
import warnings

import numpy as np

from natix.errors import DecodeError

log = logging.getLogger(__name__)

MAX_PIXELS = 100_000_000  # 100 MP; far above any camera frame, far below a decompression bomb
# The file-size cap per pixel of that budget: 16-bit RGBA (or CMYK, or 64-bit float grey) is the
# widest pixel a format we decode stores, 8 bytes raw (compressed pixels are smaller but for
# pathological cases), and already 2.7x a raw 8-bit RGB frame of the largest size. Plus room for
# metadata (EXIF, ICC, XMP, thumbnails).
FILE_BYTES_PER_PIXEL = 8
FILE_METADATA_BYTES = 16 << 20

# libjpeg's warnings (its JWRN_* messages). It decodes on after each one, padding what is missing
# with grey or decoding garbage, and only prints the first to the process's stderr: to us each is
# a failure. The list tells its lines from anything else written to stderr meanwhile.
_LIBJPEG_WARNING = re.compile(
    r"(?:Corrupt JPEG data: |Warning: )?((?:premature end of data segment|\d+ extraneous bytes before marker"
    r"|bad Huffman code|bad arithmetic code|found marker 0x[0-9a-f]+ instead of RST\d|bad ICC marker"
    r"|Premature end of JPEG file|Invalid SOS parameters for sequential JPEG"
    r"|Inconsistent progression sequence for component|Unknown Adobe color transform code"
    r"|unknown JFIF revision number|Application transferred too many scanlines).*)"
)
# One thread at a time may point file descriptor 2 elsewhere; the scratch file that catches
# what is printed meanwhile is kept per process (pid → (descriptor, inode)).
_STDERR_LOCK = threading.Lock()
_SCRATCH: dict[int, tuple[int, int]] = {}
_SCRATCH_READ: dict[int, int] = {}  # pid → how far its scratch file has been read
_SCRATCH_LIMIT = 1 << 20  # bytes of other threads' text kept before the file is emptied
_SAVED_STDERR: list[int | None] = [None]  # the real stderr while a capture holds descriptor 2


def _after_fork_in_child() -> None:
    """A child forked while another thread captured stderr inherits the taken lock and the scratch
    file as its stderr: give it a free lock and its real stderr back."""
    global _STDERR_LOCK
    _STDERR_LOCK = threading.Lock()
    if _SAVED_STDERR[0] is not None:
        try:
            os.dup2(_SAVED_STDERR[0], 2)
        except OSError:
            pass
        _SAVED_STDERR[0] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a JPEG with more frames after it (many phones write it)
_SEQUENTIAL_SOF, _PROGRESSIVE_SOF = (0xC0, 0xC1, 0xC9), (0xC2, 0xCA)  # the frames libjpeg decodes
_ALL_COEFFICIENTS = (1 << 64) - 1
# Where a scan's entropy-coded data ends: 0xFF followed by neither stuffing (00), RSTn nor fill.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, fast_jpeg: bool = True) -> np.ndarray:
    """Decode encoded image bytes to a C-contiguous ``[H, W, 3]`` uint8 RGB array.

    JPEGs go through torchvision's libjpeg-turbo decoder (about 1.6x faster than PIL on
    1080p frames and pixel-identical to PIL's, which the tests check); everything else, and
    `fast_jpeg=False`, through PIL (:func:`decode_pil`). Every JPEG is checked the same way on
    both paths: its scans must cover the whole image (:func:`check_jpeg_scans`), and libjpeg
    must decode it without a warning (PIL's decoder silences those, so with `fast_jpeg=False`
    torchvision's decode is the check and PIL's gives the pixels). Raises `DecodeError` with a
    short reason for anything that is not a complete image.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DecodeError("empty file")
    _check_file_size(len(data), max_pixels)
    try:
        with warnings.catch_warnings():
            # Our own pixel budget below replaces PIL's warning; keep PIL's hard limit too.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            _check_budget(*im.size, max_pixels)
            if im.format in _JPEG_FORMATS and im.mode in ("RGB", "L", "CMYK"):
                check_jpeg_scans(data)
                # torchvision's decode is also the check for libjpeg's warnings, which PIL's
                # decoder silences: with fast_jpeg=False it only checks, and PIL decodes.
                arr = _decode_jpeg(data)
                if arr is not None and fast_jpeg:
                    return arr
            if im.format == "PNG":
                # load() skips IDAT checksums; verify() checks every chunk's CRC (on a copy,
                # since a verified image cannot be loaded).
                Image.open(io.BytesIO(data)).verify()
            return decode_pil(im, max_pixels=max_pixels)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None


def decode_pil(im, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PIL image → C-contiguous ``[H, W, 3]`` uint8 RGB with :func:`decode_image`'s rules.

    The pixel budget is checked before the pixels are loaded (a lazily opened file decodes
    here, so truncation surfaces here), EXIF orientation is applied, and every mode becomes
    RGB as :func:`decode_image` makes it. Raises `DecodeError` with a short reason. The encoded
    bytes are not at hand here, so a JPEG damaged inside its scan decodes as PIL pads it:
    :func:`decode_image` is the strict path.
    """
    from PIL import ImageOps

    w, h = im.size
    _check_budget(w, h, max_pixels)
    if w < 1 or h < 1:
        raise DecodeError(f"image has no pixels ({w}x{h})")
    try:
        im.load()
        return _to_rgb(ImageOps.exif_transpose(im))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"corrupt or truncated image: {exc}") from None


def max_file_bytes(max_pixels: int = MAX_PIXELS) -> int:
    """The largest file an image within `max_pixels` can be: 8 bytes a pixel plus 16 MiB."""
    return FILE_BYTES_PER_PIXEL * max_pixels + FILE_METADATA_BYTES


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> bytes:
    """The bytes of an image file, refused before they are read when there are too many.

    A file larger than :func:`max_file_bytes` cannot hold an image within `max_pixels`, so
    `DecodeError` says so without reading it (a junk file of 1 GB would otherwise be read whole
    into memory). At most one byte past the cap is ever read, even from a file that grows
    meanwhile. `OSError` (missing, unreadable) is passed on: it is the caller's to retry.
    """
    cap = max_file_bytes(max_pixels)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        _check_file_size(size, max_pixels)
        parts, total, block = [], 0, size + 1  # one read for a file that keeps its size
        while total <= cap:
            want = min(block, cap + 1 - total)
            parts.append(fh.read(want))
            total += len(parts[-1])
            if len(parts[-1]) < want:  # a buffered read stops short only at the end of the file
                break
            block = 1 << 20
    if total > cap:
        _check_file_size(total, max_pixels, grew=True)
    return b"".join(parts)  # a single part is returned as is, not copied


def _check_file_size(size: int, max_pixels: int, *, grew: bool = False) -> None:
    cap = max_file_bytes(max_pixels)
    if size > cap:
        what = f"more than {cap:,}" if grew else f"{size:,}"
        raise DecodeError(f"file is {what} bytes, above the {cap:,}-byte cap for an image within the "
                          f"{max_pixels:,}-pixel limit ({FILE_BYTES_PER_PIXEL} bytes a pixel plus "
                          f"{FILE_METADATA_BYTES >> 20} MiB of metadata): it is no image natix decodes; leave it "
                          "out or re-encode it")


def check_jpeg_scans(data: bytes) -> None:
    """Raise `DecodeError` when a JPEG's scans end before every component is complete.

    libjpeg shows a progressive JPEG cut between two of its scans (or a multi-scan sequential
    one that lost a component's scan) as a blurred or grey image, without a warning. The markers
    tell: every coefficient of every component needs a scan that brings it to full precision
    (successive approximation ``Al = 0``). Only marker segments are read; entropy-coded data is
    skipped, and a baseline JPEG is done at its first scan. Anything unparsable is left to libjpeg.
    """
    components, done, progressive, pos = (), {}, False, 2
    try:
        while pos + 4 <= len(data) and data[pos] == 0xFF:
            code = data[pos + 1]
            if code == 0xD9:  # EOI
                break
            if code == 0xFF or code == 0x01 or 0xD0 <= code <= 0xD7:  # fill byte, TEM, RSTn: no length
                pos += 1 if code == 0xFF else 2
                continue
            end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            segment = data[pos + 4:end]
            if code in _SEQUENTIAL_SOF or code in _PROGRESSIVE_SOF:
                progressive = code in _PROGRESSIVE_SOF
                components = tuple(segment[6 + 3 * i] for i in range(segment[5]))
            if code == 0xDA:  # SOS
                _mark_scan(segment, progressive, done)
                if components and all(done.get(c) == _ALL_COEFFICIENTS for c in components):
                    return
                found = _MARKER_AFTER_SCAN.search(data, end)
                if found is None:
                    break
                end = found.start()
            pos = end
    except IndexError:  # a segment cut short: libjpeg reports it
        return
    if components and not all(done.get(c) == _ALL_COEFFICIENTS for c in components):
        raise DecodeError("corrupt JPEG data: the file ends before its last scan (truncated)")


def _mark_scan(sos: bytes, progressive: bool, done: dict) -> None:
    """Record in `done` (component id → bit mask of coefficients) what a scan completes."""
    n = sos[0]
    ids = [sos[1 + 2 * i] for i in range(n)]
    start, stop, approx = sos[1 + 2 * n], sos[2 + 2 * n], sos[3 + 2 * n]
    if progressive and approx & 0x0F:  # not yet the last bit of these coefficients
        return
    # A sequential scan carries every coefficient of its components, whatever Ss/Se say.
    mask = ((1 << (stop + 1)) - 1) ^ ((1 << start) - 1) if progressive else _ALL_COEFFICIENTS
    for c in ids:
        done[c] = done.get(c, 0) | mask


def _check_budget(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise DecodeError(f"{w}x{h} = {w * h:,} pixels exceeds the {max_pixels:,}-pixel limit "
                          "(decompression-bomb guard)")


def _jpeg_decoder():
    """torchvision's JPEG decoder, or None where this torchvision no longer ships it."""
    with warnings.catch_warnings():
        # torchvision 0.29 announces the move of its codecs to torchcodec; until they are
        # gone they are the fastest exact decoder at hand, and PIL takes over after.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            return None
    return decode_jpeg, ImageReadMode.RGB


def _decode_jpeg(data: bytes) -> np.ndarray | None:
    """Whole-file JPEG decode with EXIF orientation; raises on truncation, corruption and any
    libjpeg warning.

    Returns None when torchvision has no JPEG decoder (the caller then uses PIL).
    """
    import torch

    decoder = _jpeg_decoder()
    if decoder is None:
        _warn_no_libjpeg_check()
        return None
    decode_jpeg, rgb = decoder
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def decode():
        # Inside the stderr lock, so that threads do not undo each other's warning filters.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(tensor, mode=rgb, apply_exif_orientation=True)

    try:
        chw, printed = _capture_stderr(decode)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0].rsplit(", ", 1)[-1]  # drop the C++ source location
        raise DecodeError(f"corrupt or truncated image: {reason}") from None
    _raise_on_libjpeg_warning(printed)
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


def _capture_stderr(call):
    """Run `call` with file descriptor 2 pointed at a scratch file; returns (result, text written).

    libjpeg reports warnings only by printing them to the C stderr, so this is where they can be
    seen. A lock keeps threads from swapping the descriptor under each other; other threads' text
    that lands in the scratch file meanwhile is passed on by the caller.
    """
    failure, result = None, None
    with _STDERR_LOCK:
        sink = _scratch_fd()
        start = _SCRATCH_READ.get(os.getpid(), 0)
        late = _read_from(sink, start)  # another thread's write still in flight when the last capture ended
        _pass_on(late)
        start += len(late)
        if start > _SCRATCH_LIMIT:  # emptied only between captures, when fd 2 no longer points at it
            os.ftruncate(sink, 0)
            start = 0
        try:
            try:
                saved = os.dup(2)
            except OSError:  # no stderr at all: give it one for the call, close it again after
                saved = None
            os.dup2(sink, 2)
            _SAVED_STDERR[0] = saved
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, once stderr is whole again
                failure = exc
            finally:
                _SAVED_STDERR[0] = None
                if saved is None:
                    os.close(2)
                else:
                    os.dup2(saved, 2)
                    os.close(saved)
            printed = _read_from(sink, start)
        finally:
            # Not truncated here: a write another thread began before fd 2 was restored may land
            # after this read, and the next capture passes it on from this offset.
            _SCRATCH_READ[os.getpid()] = start + len(printed)
    if failure is not None:
        _pass_on(_split_warnings(printed)[1])  # what other threads printed meanwhile is not lost
        raise failure
    return result, printed


def _read_from(fd: int, offset: int) -> bytes:
    """Everything in the scratch file from `offset` to its end."""
    size = os.fstat(fd).st_size
    return os.pread(fd, size - offset, offset) if size > offset else b""


def _scratch_fd() -> int:
    """This process's scratch file for `_capture_stderr` (call with the lock held).

    Nameless and opened for appending, so each write lands whole at the end, whichever thread
    wrote it. Kept open, as making one costs as much as the rest of the check; made anew in a
    forked child (which shares its parent's descriptors) and when the descriptor no longer
    names the file made (someone closed it), so that no other file is ever truncated.
    """
    fd, inode = _SCRATCH.get(os.getpid(), (-1, -1))
    try:
        if fd >= 0 and os.fstat(fd).st_ino == inode:
            return fd
    except OSError:
        pass
    if hasattr(os, "memfd_create"):  # Linux: in memory, no disk
        fd = os.memfd_create("natix-stderr")
    else:
        with tempfile.TemporaryFile() as fh:
            fd = os.dup(fh.fileno())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
    _SCRATCH[os.getpid()] = (fd, os.fstat(fd).st_ino)
    _SCRATCH_READ[os.getpid()] = 0
    return fd


def _split_warnings(printed: bytes) -> tuple[list[str], list[bytes]]:
    """libjpeg's warnings in `printed` (their text) and every other line (as printed)."""
    reasons, others = [], []
    for line in printed.splitlines(keepends=True):
        match = _LIBJPEG_WARNING.fullmatch(line.decode("utf-8", "replace").rstrip("\n"))
        if match:
            reasons.append(match.group(1))
        else:
            others.append(line)
    return reasons, others


def _pass_on(lines: list[bytes]) -> None:
    """Write lines another thread printed during a capture to the real stderr."""
    if lines:
        try:
            os.write(2, b"".join(lines))
        except OSError:  # stderr closed: there was nowhere to show them anyway
            pass


def _raise_on_libjpeg_warning(printed: bytes) -> None:
    """Raise DecodeError for the first libjpeg warning in `printed`; pass other lines on to stderr."""
    reasons, others = _split_warnings(printed)
    _pass_on(others)
    if reasons:
        raise DecodeError(f"corrupt JPEG data: {reasons[0][0].lower()}{reasons[0][1:]}")


@functools.lru_cache(maxsize=None)
def _warn_no_libjpeg_check() -> None:
    """Said once per process: without torchvision's decoder, libjpeg's warnings cannot be seen."""
    log.warning("this torchvision has no JPEG decoder: JPEGs are decoded by PIL, which cannot tell a JPEG "
                "whose scan is truncated or damaged from a good one (a torchvision with io.decode_jpeg restores the check)")


def _to_rgb(im) -> np.ndarray:
    """Any PIL mode → ``[H, W, 3]`` uint8."""
    from PIL import Image

    mode = im.mode
    # A PNG tRNS colour key (1/L/RGB) or a palette transparency entry (P) is transparency too.
    keyed = mode in ("1", "L", "P", "RGB") and "transparency" in im.info
    if mode == "RGB" and not keyed:
        return np.array(im, dtype=np.uint8)  # a writable copy (PIL's buffer is read-only)
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            arr = arr.astype(np.float64)
            finite = arr[np.isfinite(arr)]
            top = 1.0 if finite.size and finite.max() <= 1.0 else 255.0
            arr = np.nan_to_num(arr, nan=0.0, posinf=top, neginf=0.0) * (255.0 / top)
        else:
            arr = arr.astype(np.int64)
            # 16-bit data (I;16 or 16-bit PNGs opened as I) spans 0..65535: rescale, don't clip.
            if mode.startswith("I;16") or arr.max(initial=0) > 255:
                arr = arr / 257.0
        gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or keyed:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.array(im.convert("RGB"), dtype=np.uint8)
