"""Tests for `natix.data.decode.decode_image`: a corpus of odd, tiny, huge and broken images."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from natix.data.decode import MAX_PIXELS, decode_image
from natix.errors import DecodeError

WHITE = (255, 255, 255)
ORIENTATION = 0x0112  # the EXIF tag


def _encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (h, w, 3)).copy()


def _gray(values: np.ndarray) -> np.ndarray:
    """Expected RGB output of a grayscale image: the value repeated in three channels."""
    return np.repeat(np.asarray(values, dtype=np.uint8)[:, :, None], 3, axis=2)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _one_bit_png(w: int, h: int, *, idat: bytes | None = None) -> bytes:
    """A 1-bit grayscale PNG built by hand; all-black rows unless `idat` is given."""
    if idat is None:
        idat = zlib.compress(b"\x00" * ((w + 7) // 8 + 1) * h, 9)
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _noise(h: int = 64, w: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


# --- the corpus of valid images: builder → (encoded bytes, expected [H, W, 3], tolerance) -------

Built = tuple[bytes, np.ndarray, int]


def _rgb_jpeg() -> Built:
    return _encode(Image.new("RGB", (16, 12), (200, 100, 50)), "JPEG", quality=95), _solid(12, 16, (200, 100, 50)), 2


def _rgb_png() -> Built:
    return _encode(Image.new("RGB", (5, 3), (1, 2, 250)), "PNG"), _solid(3, 5, (1, 2, 250)), 0


def _rgb_bmp() -> Built:
    return _encode(Image.new("RGB", (5, 3), (9, 180, 33)), "BMP"), _solid(3, 5, (9, 180, 33)), 0


def _l_png() -> Built:
    return _encode(Image.new("L", (4, 3), 77), "PNG"), _solid(3, 4, (77, 77, 77)), 0


def _la_png() -> Built:
    # (value, alpha): opaque keeps its grey, transparent becomes white, half alpha blends with white.
    arr = np.array([[[90, 255], [90, 0], [0, 128]]], dtype=np.uint8)
    expected = _gray(np.array([[90, 255, 127]]))
    return _encode(Image.fromarray(arr, "LA"), "PNG"), expected, 1


def _p_png() -> Built:
    im = Image.new("P", (3, 2), 1)
    im.putpalette([10, 20, 30, 240, 120, 0] + [0, 0, 0] * 254)
    im.putpixel((0, 0), 0)
    expected = _solid(2, 3, (240, 120, 0))
    expected[0, 0] = (10, 20, 30)
    return _encode(im, "PNG"), expected, 0


def _p_png_transparency() -> Built:
    im = Image.new("P", (2, 1), 1)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    im.putpixel((0, 0), 0)  # index 0 (red) is the transparent entry → white
    return _encode(im, "PNG", transparency=0), np.array([[WHITE, (0, 0, 255)]], dtype=np.uint8), 0


def _p_gif_transparency() -> Built:
    im = Image.new("P", (2, 2), 1)
    im.putpalette([255, 0, 0, 0, 160, 0] + [0, 0, 0] * 254)
    im.putpixel((1, 1), 0)
    expected = _solid(2, 2, (0, 160, 0))
    expected[1, 1] = WHITE
    return _encode(im, "GIF", transparency=0), expected, 0


def _rgba_png() -> Built:
    arr = np.array([[[10, 20, 30, 0], [10, 200, 30, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    expected = np.array([[WHITE, (10, 200, 30), (127, 127, 127)]], dtype=np.uint8)
    return _encode(Image.fromarray(arr, "RGBA"), "PNG"), expected, 1


def _l_png_trns() -> Built:
    # A grayscale PNG whose tRNS chunk makes the value 10 transparent.
    arr = np.array([[10, 50]], dtype=np.uint8)
    return _encode(Image.fromarray(arr, "L"), "PNG", transparency=10), _gray(np.array([[255, 50]])), 0


def _rgb_png_trns() -> Built:
    # An RGB PNG whose tRNS chunk makes the colour (1, 2, 3) transparent.
    arr = np.array([[[1, 2, 3], [1, 2, 4]]], dtype=np.uint8)
    expected = np.array([[WHITE, (1, 2, 4)]], dtype=np.uint8)
    return _encode(Image.fromarray(arr, "RGB"), "PNG", transparency=(1, 2, 3)), expected, 0


def _cmyk_jpeg() -> Built:
    # Magenta + yellow ink and no black is red on screen (an inverted-CMYK bug gives cyan).
    return _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), _solid(16, 16, (255, 0, 0)), 2


def _i16(fmt: str) -> Callable[[], Built]:
    def build() -> Built:
        # Rescaled by 1/257: 65535 → 255, 32896 → 128, 25700 → 100; clipping would give 255s.
        arr = np.array([[0, 25700, 32896, 65535]], dtype=np.uint16)
        im = Image.fromarray(arr)
        assert im.mode == "I;16"
        return _encode(im, fmt), _gray(np.array([[0, 100, 128, 255]])), 0

    return build


def _i16_dark_png() -> Built:
    # 16-bit data that happens to be dark is still 16-bit: 200/257 → 1, not 200.
    return _encode(Image.fromarray(np.full((2, 3), 200, dtype=np.uint16)), "PNG"), _solid(2, 3, (1, 1, 1)), 0


def _i32_tiff() -> Built:
    arr = np.array([[0, 1000, 65535]], dtype=np.int32)
    return _encode(Image.fromarray(arr, "I"), "TIFF"), _gray(np.array([[0, 4, 255]])), 0


def _f_unit_tiff() -> Built:
    # Float data in [0, 1] is scaled by 255 (0.25 → 63.75 → 64).
    arr = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    return _encode(Image.fromarray(arr, "F"), "TIFF"), _gray(np.array([[0, 64, 128, 255]])), 0


def _f_byte_range_tiff() -> Built:
    # Float data beyond 1 is already on the 0..255 scale; NaN becomes 0.
    arr = np.array([[0.0, 100.0, 254.6, np.nan]], dtype=np.float32)
    return _encode(Image.fromarray(arr, "F"), "TIFF"), _gray(np.array([[0, 100, 255, 0]])), 0


def _bilevel_png() -> Built:
    bits = (np.indices((4, 4)).sum(axis=0) % 2).astype(bool)
    im = Image.fromarray(bits)
    assert im.mode == "1"
    return _encode(im, "PNG"), _gray(np.where(bits, 255, 0)), 0


VALID = [
    pytest.param(_rgb_jpeg, id="rgb-jpeg"),
    pytest.param(_rgb_png, id="rgb-png"),
    pytest.param(_rgb_bmp, id="rgb-bmp"),
    pytest.param(_l_png, id="L"),
    pytest.param(_la_png, id="LA"),
    pytest.param(_p_png, id="P"),
    pytest.param(_p_png_transparency, id="P-transparency-png"),
    pytest.param(_p_gif_transparency, id="P-transparency-gif"),
    pytest.param(_rgba_png, id="RGBA"),
    pytest.param(_l_png_trns, id="L-tRNS"),
    pytest.param(_rgb_png_trns, id="RGB-tRNS"),
    pytest.param(_cmyk_jpeg, id="CMYK-jpeg"),
    pytest.param(_i16("PNG"), id="I;16-png"),
    pytest.param(_i16("TIFF"), id="I;16-tiff"),
    pytest.param(_i16_dark_png, id="I;16-dark-png"),
    pytest.param(_i32_tiff, id="I-tiff"),
    pytest.param(_f_unit_tiff, id="F-unit-range"),
    pytest.param(_f_byte_range_tiff, id="F-byte-range"),
    pytest.param(_bilevel_png, id="1"),
]


@pytest.mark.parametrize("build", VALID)
def test_every_mode_becomes_rgb_uint8_with_expected_pixels(build: Callable[[], Built]) -> None:
    data, expected, tol = build()
    out = decode_image(data)
    assert out.dtype == np.uint8
    assert out.shape == expected.shape
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= tol, f"max error {diff.max()}:\n{out.tolist()}\nexpected\n{expected.tolist()}"


@pytest.mark.parametrize("build", VALID)
def test_output_is_a_writable_contiguous_copy(build: Callable[[], Built]) -> None:
    data, _, _ = build()
    out = decode_image(data)
    assert out.flags.c_contiguous and out.flags.writeable
    first = out[0, 0].tolist()
    assert first != [7, 8, 9]
    out[0, 0] = (7, 8, 9)
    assert out[0, 0].tolist() == [7, 8, 9]
    assert decode_image(data)[0, 0].tolist() == first  # the write reached no shared buffer


# --- EXIF orientation ------------------------------------------------------------------------

RED = np.array([255, 0, 0])
GREY = np.array([128, 128, 128])


def _marked_jpeg(orientation: int | None) -> bytes:
    """A 48×24 (W×H) grey image with a red 8×8 block in its stored top-left corner."""
    arr = np.full((24, 48, 3), 128, dtype=np.uint8)
    arr[:8, :8] = (255, 0, 0)
    im = Image.fromarray(arr)
    if orientation is None:
        return _encode(im, "JPEG", quality=95)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return _encode(im, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize(
    ("orientation", "shape", "red_corner"),
    [
        pytest.param(None, (24, 48), "top-left", id="no-exif"),
        pytest.param(1, (24, 48), "top-left", id="1-normal"),
        pytest.param(3, (24, 48), "bottom-right", id="3-rotate-180"),
        pytest.param(6, (48, 24), "top-right", id="6-rotate-90-cw"),
        pytest.param(8, (48, 24), "bottom-left", id="8-rotate-90-ccw"),
    ],
)
def test_exif_orientation_is_applied(orientation: int | None, shape: tuple[int, int], red_corner: str) -> None:
    out = decode_image(_marked_jpeg(orientation))
    assert out.shape == (*shape, 3)
    h, w = shape
    corners = {"top-left": out[3, 3], "top-right": out[3, w - 4],
               "bottom-left": out[h - 4, 3], "bottom-right": out[h - 4, w - 4]}
    for name, pixel in corners.items():
        target = RED if name == red_corner else GREY
        assert np.abs(pixel.astype(int) - target).max() <= 20, f"{name} is {pixel.tolist()}"


# --- broken inputs ---------------------------------------------------------------------------


def _jpeg_bytes() -> bytes:
    return _encode(_noise(), "JPEG", quality=90)


def _png_bytes() -> bytes:
    return _encode(_noise(), "PNG")


def _flip_in_idat(where: str) -> bytes:
    """A PNG with one bit flipped in its IDAT chunk: in the compressed data or in the CRC."""
    data = bytearray(_encode(_noise(16, 16), "PNG", compress_level=0))
    at = data.find(b"IDAT")
    (length,) = struct.unpack(">I", data[at - 4:at])
    pos = at + 4 + length if where == "crc" else at + 4 + length // 2
    data[pos] ^= 0x01
    return bytes(data)


BROKEN = [
    pytest.param(lambda: b"", "empty", id="zero-bytes"),
    pytest.param(lambda: np.random.default_rng(1).bytes(4096), "not a recognised image", id="random-bytes"),
    pytest.param(lambda: b"path,label\nimg_00001.jpg,1\n", "not a recognised image", id="text-file"),
    pytest.param(lambda: _jpeg_bytes()[:len(_jpeg_bytes()) // 2], "truncated|corrupt", id="jpeg-cut-at-half"),
    pytest.param(lambda: _jpeg_bytes()[:-100], "truncated|corrupt", id="jpeg-cut-100-from-end"),
    pytest.param(lambda: _jpeg_bytes()[:-2], "truncated|corrupt", id="jpeg-without-eoi"),
    pytest.param(lambda: _jpeg_bytes()[:400], "truncated|corrupt", id="jpeg-header-only"),
    pytest.param(lambda: _png_bytes()[:len(_png_bytes()) // 2], "truncated|corrupt", id="png-cut-at-half"),
    pytest.param(lambda: _flip_in_idat("data"), "truncated|corrupt", id="png-idat-data-flipped"),
    pytest.param(lambda: _flip_in_idat("crc"), "truncated|corrupt", id="png-idat-crc-flipped"),
    pytest.param(lambda: _one_bit_png(8, 8, idat=b"not zlib data"), "truncated|corrupt", id="png-idat-not-zlib"),
    pytest.param(lambda: (g := _encode(_noise(), "GIF"))[:len(g) // 2], "truncated|corrupt", id="gif-cut-at-half"),
    pytest.param(lambda: (b := _encode(_noise(), "BMP"))[:len(b) // 2], "truncated|corrupt", id="bmp-cut-at-half"),
]


@pytest.mark.parametrize(("build", "match"), BROKEN)
def test_broken_images_raise_decode_error(build: Callable[[], bytes], match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_image(build())


def test_the_cut_images_are_valid_when_whole() -> None:
    """The broken corpus fails because of the damage, not because the source images were bad."""
    assert decode_image(_jpeg_bytes()).shape == (64, 64, 3)
    assert decode_image(_png_bytes()).shape == (64, 64, 3)
    assert decode_image(_encode(_noise(16, 16), "PNG", compress_level=0)).shape == (16, 16, 3)
    assert decode_image(_one_bit_png(8, 8)).shape == (8, 8, 3)


def test_text_file_from_disk_is_not_an_image(tmp_path) -> None:
    notes = tmp_path / "notes.jpg"  # the suffix lies
    notes.write_text("roadwork ahead\n", encoding="utf-8")
    with pytest.raises(DecodeError, match="not a recognised image"):
        decode_image(notes.read_bytes())


# --- decompression bombs ---------------------------------------------------------------------


def test_bomb_above_the_pixel_budget_is_refused_before_decoding() -> None:
    # A valid, fully decodable 1-bit PNG of 120 MP that compresses to a few kB; decoding it
    # would allocate 360 MB of RGB.
    w, h = 12_000, 10_000
    assert MAX_PIXELS < w * h
    bomb = _one_bit_png(w, h)
    assert len(bomb) < 100_000
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="limit"):
        decode_image(bomb)
    assert time.perf_counter() - start < 0.5


def test_bomb_above_pil_hard_limit_is_refused() -> None:
    # The header claims 10 gigapixels; the pixel data is not even there.
    start = time.perf_counter()
    with pytest.raises(DecodeError, match="limit"):
        decode_image(_one_bit_png(100_000, 100_000, idat=zlib.compress(b"")))
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(("max_pixels", "refused"), [(10, True), (15, True), (16, False), (1000, False)])
def test_max_pixels_is_the_inclusive_budget(max_pixels: int, refused: bool) -> None:
    data = _encode(Image.new("RGB", (4, 4), (5, 6, 7)), "PNG")
    if refused:
        with pytest.raises(DecodeError, match=rf"4x4 = 16 pixels exceeds the {max_pixels:,}-pixel limit"):
            decode_image(data, max_pixels=max_pixels)
    else:
        assert decode_image(data, max_pixels=max_pixels).shape == (4, 4, 3)


# --- tiny images -----------------------------------------------------------------------------


@pytest.mark.parametrize(("w", "h"), [(1, 1), (1, 500), (500, 1)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_tiny_images(w: int, h: int, fmt: str) -> None:
    # A ramp along the long side shows the axes are not swapped.
    ramp = np.rint(np.linspace(0, 255, w * h)).astype(np.uint8).reshape(h, w)
    arr = np.stack([ramp, np.full_like(ramp, 40), np.full_like(ramp, 200)], axis=2)
    options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    out = decode_image(_encode(Image.fromarray(arr), fmt, **options))
    assert out.shape == (h, w, 3)
    assert out.flags.c_contiguous
    if fmt == "PNG":
        np.testing.assert_array_equal(out, arr)
    else:
        assert np.abs(out[..., 1:].astype(int) - arr[..., 1:]).max() <= 8
        if w * h > 1:
            assert np.corrcoef(out[..., 0].ravel(), arr[..., 0].ravel())[0, 1] > 0.9


@pytest.mark.parametrize("mode, kwargs", [
    ("RGB", {"quality": 90}),
    ("RGB", {"quality": 75, "subsampling": 0}),
    ("RGB", {"quality": 95, "progressive": True}),
    ("L", {"quality": 90}),
    ("CMYK", {"quality": 90}),
    ("RGB", {"quality": 90, "exif": 6}),
])
def test_fast_jpeg_path_is_pixel_identical_to_pil(mode, kwargs):
    from PIL import Image

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode)
    kwargs = dict(kwargs)
    if "exif" in kwargs:
        exif = Image.Exif()
        exif[0x0112] = kwargs.pop("exif")
        kwargs["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kwargs)
    data = buf.getvalue()
    fast, slow = decode_image(data), decode_image(data, fast_jpeg=False)
    assert fast.shape == slow.shape and fast.flags.c_contiguous and fast.flags.writeable
    np.testing.assert_array_equal(fast, slow)
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_image(data[:-2])


# --- PIL images (what a caller of a bundle may pass) -----------------------------------------


@pytest.mark.parametrize("build", VALID)
def test_decode_pil_follows_the_same_rules_as_decode_image(build: Callable[[], Built]) -> None:
    from natix.data.decode import decode_pil

    data, _, _ = build()
    out = decode_pil(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(out, decode_image(data, fast_jpeg=False))
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_decode_pil_applies_exif_orientation(orientation: int) -> None:
    from natix.data.decode import decode_pil

    data = _marked_jpeg(orientation)
    np.testing.assert_array_equal(decode_pil(Image.open(io.BytesIO(data))), decode_image(data, fast_jpeg=False))


def test_decode_pil_refuses_truncation_and_the_pixel_budget() -> None:
    from natix.data.decode import decode_pil

    cut = _png_bytes()[: len(_png_bytes()) // 2]
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_pil(Image.open(io.BytesIO(cut)))  # opened lazily: the damage surfaces when decoding
    with pytest.raises(DecodeError, match="64x64 = 4,096 pixels exceeds the 4,095-pixel limit"):
        decode_pil(_noise(), max_pixels=4095)
    assert decode_pil(_noise(), max_pixels=4096).shape == (64, 64, 3)


# --- JPEGs that libjpeg decodes with a warning (grey-filled or garbled) -----------------------


def _photo_jpeg(**options) -> bytes:
    """A 256×256 noise JPEG: every MCU carries data, so any cut lands inside the scan."""
    return _encode(_noise(256, 256), "JPEG", quality=90, **options)


def _cut_with_eoi(fraction: float, **options) -> bytes:
    """The first `fraction` of a JPEG with an EOI marker appended: it looks complete."""
    data = _photo_jpeg(**options)
    return data[: int(len(data) * fraction)] + b"\xff\xd9"


def _zeroed_mid_scan() -> bytes:
    data = bytearray(_photo_jpeg())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    return bytes(data)


LIBJPEG_WARNS = [
    pytest.param(lambda: _cut_with_eoi(0.30), "premature end of data segment", id="cut-30%-plus-eoi"),
    pytest.param(lambda: _cut_with_eoi(0.60), "premature end of data segment", id="cut-60%-plus-eoi"),
    pytest.param(lambda: _cut_with_eoi(0.95), "premature end of data segment", id="cut-95%-plus-eoi"),
    pytest.param(lambda: _cut_with_eoi(0.60, progressive=True), "the file ends before its last scan",
                 id="progressive-cut-60%-plus-eoi"),
    pytest.param(_zeroed_mid_scan, "extraneous bytes|premature end|bad Huffman code", id="zeroed-mid-scan"),
]


@pytest.mark.parametrize("fast_jpeg", [True, False], ids=["torchvision", "pil"])
@pytest.mark.parametrize(("build", "match"), LIBJPEG_WARNS)
def test_jpeg_that_libjpeg_warns_about_is_a_failure(build, match, fast_jpeg, capfd) -> None:
    """libjpeg pads a truncated scan with grey and only prints a warning: that is a failure here,
    with libjpeg's reason, and nothing reaches the process's stderr."""
    data = build()
    assert Image.open(io.BytesIO(data)).size == (256, 256)  # the header is intact
    with pytest.raises(DecodeError, match=rf"^corrupt JPEG data: .*({match})"):
        decode_image(data, fast_jpeg=fast_jpeg)
    assert capfd.readouterr().err == ""


def test_a_good_jpeg_decodes_silently_after_a_corrupt_one(capfd) -> None:
    with pytest.raises(DecodeError):
        decode_image(_cut_with_eoi(0.5))
    good = _photo_jpeg()
    np.testing.assert_array_equal(decode_image(good), decode_image(good, fast_jpeg=False))
    assert capfd.readouterr().err == ""


def test_other_output_to_stderr_still_reaches_it_while_jpegs_decode(capfd) -> None:
    """The libjpeg check listens to the process's stderr for a moment; what others write there
    meanwhile is passed on, not swallowed or taken for a warning."""
    with _chatter() as written:
        good, bad = _photo_jpeg(), _cut_with_eoi(0.5)
        for _ in range(20):
            assert decode_image(good).shape == (256, 256, 3)
            with pytest.raises(DecodeError, match="premature end of data segment"):
                decode_image(bad)
    err = capfd.readouterr().err
    assert sorted(err.splitlines(keepends=True)) == sorted(written)
    assert "Corrupt JPEG" not in err


def test_threads_decoding_jpegs_each_get_their_own_verdict() -> None:
    from concurrent.futures import ThreadPoolExecutor

    good, bad = _photo_jpeg(), _cut_with_eoi(0.6)
    expected = decode_image(good, fast_jpeg=False)

    def one(k: int) -> str:
        try:
            out = decode_image(good if k % 2 else bad, fast_jpeg=bool(k % 3))
        except DecodeError as exc:
            return str(exc)
        return "same" if np.array_equal(out, expected) else "different"

    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(one, range(64)))
    assert verdicts[1::2] == ["same"] * 32
    assert all(v.startswith("corrupt JPEG data: premature end") for v in verdicts[::2])


def _progressive_scan_cuts() -> list[bytes]:
    """A progressive JPEG cut at each of its scan boundaries, EOI appended: libjpeg shows the
    scans that are there (a blurred image) without a warning."""
    data = _photo_jpeg(progressive=True)
    starts = [k for k in range(len(data) - 1) if data[k:k + 2] == b"\xff\xda"]
    assert len(starts) >= 6
    return [data[:k] + b"\xff\xd9" for k in starts[1:]]


@pytest.mark.parametrize("fast_jpeg", [True, False], ids=["torchvision", "pil"])
def test_progressive_jpeg_cut_between_scans_is_a_failure(fast_jpeg, capfd) -> None:
    for cut in _progressive_scan_cuts():
        with pytest.raises(DecodeError, match=r"^corrupt JPEG data: the file ends before its last scan"):
            decode_image(cut, fast_jpeg=fast_jpeg)
    assert capfd.readouterr().err == ""
    whole = _photo_jpeg(progressive=True)
    np.testing.assert_array_equal(decode_image(whole), decode_image(whole, fast_jpeg=False))


def _mpo(cut: float | None = None) -> bytes:
    """A two-frame MPO (what many phones write); decoding keeps the first frame."""
    first, second = _noise(120, 160), _noise(64, 64)
    data = _encode(first, "MPO", save_all=True, append_images=[second], quality=90)
    return data if cut is None else data[: int(len(data) * cut)] + b"\xff\xd9"


@pytest.mark.parametrize("fast_jpeg", [True, False], ids=["torchvision", "pil"])
def test_mpo_is_checked_as_a_jpeg(fast_jpeg, capfd) -> None:
    assert Image.open(io.BytesIO(_mpo())).format == "MPO"
    out = decode_image(_mpo(), fast_jpeg=fast_jpeg)
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(_mpo())).convert("RGB")))
    with pytest.raises(DecodeError, match="^corrupt JPEG data: premature end of data segment"):
        decode_image(_mpo(cut=0.3), fast_jpeg=fast_jpeg)
    assert capfd.readouterr().err == ""


def _marker(code: int, payload: bytes = b"") -> bytes:
    return bytes([0xFF, code]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _sequential(scans: list[list[int]]) -> bytes:
    """Markers of a 3-component sequential JPEG with one scan per list of component ids; each
    scan's entropy data is a stand-in (markers are all the check reads)."""
    sof = bytes([8, 0, 16, 0, 16, 3]) + b"".join(bytes([c, 0x11, 0]) for c in (1, 2, 3))
    body = b""
    for ids in scans:
        sos = bytes([len(ids)]) + b"".join(bytes([c, 0]) for c in ids) + bytes([0, 63, 0])
        body += _marker(0xDA, sos) + b"\x12\x34\xff\x00\x56\xff\xd0\x78"  # stuffing and RST0 inside
    return b"\xff\xd8" + _marker(0xC0, sof) + body + b"\xff\xd9"


def test_check_jpeg_scans_wants_every_component_of_a_multi_scan_jpeg() -> None:
    from natix.data.decode import check_jpeg_scans

    check_jpeg_scans(_sequential([[1, 2, 3]]))  # interleaved: done at its scan
    check_jpeg_scans(_sequential([[1], [2], [3]]))  # one scan per component
    check_jpeg_scans(_sequential([[1], [2, 3]]))
    for scans in ([[1]], [[1], [2]], [[2, 3]], []):
        with pytest.raises(DecodeError, match="ends before its last scan"):
            check_jpeg_scans(_sequential(scans))
    check_jpeg_scans(_sequential([[1]])[:30])  # cut inside a segment: left to libjpeg


def test_without_torchvision_jpeg_decoder_pil_decodes_and_the_scan_check_stays(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torchvision.io", None)  # as where torchvision dropped its codecs
    good = _photo_jpeg()
    np.testing.assert_array_equal(decode_image(good), np.asarray(Image.open(io.BytesIO(good))))
    with pytest.raises(DecodeError, match="ends before its last scan"):
        decode_image(_progressive_scan_cuts()[0])


def _decode_verdicts(payloads: list[bytes]) -> list[str]:
    verdicts = []
    for data in payloads:
        try:
            verdicts.append(str(decode_image(data).shape))
        except DecodeError as exc:
            verdicts.append(str(exc))
    return verdicts


def test_a_forked_child_checks_jpegs_as_its_parent_does(capfd) -> None:
    """DataLoader workers are forked after the parent has decoded: the child keeps its own check."""
    import multiprocessing

    payloads = [_photo_jpeg(), _cut_with_eoi(0.5), _zeroed_mid_scan()]
    here = _decode_verdicts(payloads)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        there = pool.apply(_decode_verdicts, (payloads,))
    assert there == here
    assert here[0] == "(256, 256, 3)" and all(v.startswith("corrupt JPEG data") for v in here[1:])
    assert capfd.readouterr().err == ""


# --- files too large for any image within the pixel limit ------------------------------------


def test_file_cap_follows_the_pixel_limit() -> None:
    from natix.data.decode import max_file_bytes

    # 16-bit RGBA, the widest pixel a supported format stores raw, is 8 bytes; plus 16 MiB of metadata.
    assert max_file_bytes() == 8 * MAX_PIXELS + (16 << 20) == 816_777_216
    assert max_file_bytes(1000) == 8000 + (16 << 20)


def test_a_huge_junk_file_is_refused_before_it_is_read(tmp_path) -> None:
    import tracemalloc

    from natix.data.decode import read_image

    junk = tmp_path / "junk.jpg"
    with open(junk, "wb") as fh:
        fh.write(_photo_jpeg()[:600])  # a JPEG's start, then 1 GiB of nothing (sparse: no disk used)
        fh.truncate(1 << 30)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DecodeError, match=r"^file is 1,073,741,824 bytes, above the 816,777,216-byte cap "
                                              r"for an image within the 100,000,000-pixel limit"):
            read_image(junk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 1 << 20


def test_read_image_returns_the_bytes_and_passes_os_errors_on(tmp_path) -> None:
    from natix.data.decode import read_image

    data = _photo_jpeg()
    (tmp_path / "a.jpg").write_bytes(data)
    assert read_image(tmp_path / "a.jpg") == data
    with pytest.raises(FileNotFoundError):  # the extractor retries these next run
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(IsADirectoryError):
        read_image(tmp_path)


def test_a_file_that_grows_past_the_cap_while_read_is_refused(tmp_path) -> None:
    from natix.data.decode import max_file_bytes, read_image

    fifo = tmp_path / "stream.jpg"  # reports size 0, then delivers more than the cap
    os.mkfifo(fifo)
    cap = max_file_bytes(1)
    writer = threading.Thread(target=lambda: _feed(fifo, cap + 1000))
    writer.start()
    try:
        with pytest.raises(DecodeError, match=rf"^file is more than {cap:,} bytes, above the {cap:,}-byte cap"):
            read_image(fifo, max_pixels=1)
    finally:
        writer.join()


def _feed(path, n: int) -> None:
    try:
        with open(path, "wb") as fh:
            fh.write(bytes(n))
    except BrokenPipeError:  # the reader stopped at the cap
        pass


def test_decode_image_refuses_bytes_above_the_cap_before_decoding() -> None:
    from natix.data.decode import max_file_bytes

    cap = max_file_bytes(64)
    png = _encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    padded = png + bytes(cap - len(png))  # trailing bytes after IEND: PIL ignores them
    assert decode_image(padded, max_pixels=64).shape == (8, 8, 3)
    with pytest.raises(DecodeError, match=rf"^file is {cap + 1:,} bytes, above the {cap:,}-byte cap"):
        decode_image(padded + b"\x00", max_pixels=64)


@contextlib.contextmanager
def _chatter():
    """A thread writing numbered lines to the process's stderr (fd 2) meanwhile; yields what it wrote."""
    import os
    import threading

    stop = threading.Event()
    written = []

    def chatter() -> None:
        while not stop.is_set() and len(written) < 2000:
            line = f"other {len(written)}\n"
            os.write(2, line.encode())
            written.append(line)

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        yield written
    finally:
        stop.set()
        thread.join()


def test_other_output_to_stderr_is_kept_when_the_decode_itself_fails(capfd) -> None:
    with _chatter() as written:
        good = _photo_jpeg()
        for _ in range(20):
            with pytest.raises(DecodeError):
                decode_image(good[: len(good) // 2])  # no end marker: the decoder itself raises
    assert sorted(capfd.readouterr().err.splitlines(keepends=True)) == sorted(written)


def test_a_child_forked_while_another_thread_decodes_can_decode() -> None:
    """The child of a fork inherits the capture's lock as it was: taken, if a thread held it."""
    import os
    import time

    from natix.data import decode as decode_module

    good = _photo_jpeg()
    with decode_module._STDERR_LOCK:  # as a thread in the middle of a capture would hold it
        pid = os.fork()
        if pid == 0:
            try:
                ok = decode_image(good).shape == (256, 256, 3)
            finally:
                os._exit(0 if ok else 1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung on the inherited lock")
