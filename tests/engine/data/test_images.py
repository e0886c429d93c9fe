"""poets.engine.data.images: every format and mode becomes upright 8-bit RGB; bad bytes fail cleanly."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poets.engine.data.images import Distortion, Preprocessing, prepare
from poets.engine.errors import InvalidImage
from tests.engine.imaging import BLUE, RED, corrupt_jpeg, encode, solid, truncated

PREP = Preprocessing(32)


def mean_color(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, 3).astype(np.float64).mean(axis=0)


def assert_color(pixels: np.ndarray, color, tolerance: float = 6.0) -> None:  # type: ignore[no-untyped-def]
    assert pixels.shape[-1] == 3
    assert pixels.dtype == np.uint8
    np.testing.assert_allclose(mean_color(pixels), color, atol=tolerance)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
def test_every_supported_format_reads(fmt: str) -> None:
    options = {"lossless": True} if fmt == "WEBP" else {}
    assert_color(prepare(solid(RED, fmt=fmt, **options), PREP), RED, tolerance=8)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (40, 30), RED), Image.new("RGB", (40, 30), BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert_color(prepare(data, PREP), RED)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_color(prepare(data, PREP), RED, tolerance=10)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_grayscale_becomes_grey_rgb(fmt: str) -> None:
    pixels = prepare(encode(Image.new("L", (40, 30), 128), fmt), PREP)
    assert_color(pixels, (128, 128, 128), tolerance=2)


def test_palette_png_uses_its_colours() -> None:
    image = Image.new("RGB", (40, 30), BLUE).convert("P", palette=Image.ADAPTIVE, colors=4)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    assert_color(prepare(data, PREP), BLUE, tolerance=1)


def test_alpha_is_composited_over_white() -> None:
    image = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 20, 30))  # left half fully transparent black
    pixels = prepare(encode(image, "PNG"), PREP)
    assert_color(pixels[:, :14], (255, 255, 255), tolerance=1)
    assert_color(pixels[:, 18:], RED, tolerance=1)


def test_grey_with_alpha_and_transparent_palette() -> None:
    la = Image.new("LA", (40, 30), (0, 0))  # black, fully transparent
    assert_color(prepare(encode(la, "PNG"), PREP), (255, 255, 255), tolerance=1)
    palette = Image.new("P", (40, 30), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (20, 0, 40, 30))
    pixels = prepare(encode(palette, "PNG", transparency=0), PREP)
    assert_color(pixels[:, :14], (255, 255, 255), tolerance=1)
    assert_color(pixels[:, 18:], RED, tolerance=1)


@pytest.mark.parametrize("value, expected", [(65535, 255), (32768, 128), (0, 0), (200, 1)])
def test_16_bit_png_is_scaled_not_clipped(value: int, expected: int) -> None:
    image = Image.new("I;16", (40, 30), value)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert_color(prepare(data, PREP), (expected,) * 3, tolerance=1)


def test_16_bit_png_keeps_its_gradient() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    image = Image.fromarray(ramp)  # mode I;16
    pixels = prepare(encode(image, "PNG"), Preprocessing(64)).astype(int)
    row = pixels[8, :, 0]
    assert row[0] <= 2 and row[-1] >= 253
    assert np.all(np.diff(row) >= 0)


def test_16_bit_rgb_png_keeps_its_colours() -> None:
    # Pillow reads 48-bit RGB PNGs as 8-bit RGB (high bytes); check nothing wraps around.
    import zlib

    width, height = 8, 8
    row = b"\x00" + (b"\xff\xff\x80\x00\x00\x00") * width  # red 65535, green 32768, blue 0
    raw = row * height

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    assert_color(prepare(data, PREP), (255, 128, 0), tolerance=1)


def test_exif_orientation_is_honoured() -> None:
    # Upright: a portrait image, red on top and blue below. The camera stored it turned
    # a quarter left with Orientation 6 ("rotate 90 clockwise to display").
    upright = Image.new("RGB", (30, 60), BLUE)
    upright.paste(RED, (0, 0, 30, 30))
    stored = upright.transpose(Image.ROTATE_90)
    assert stored.size == (60, 30)
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = prepare(encode(stored, "JPEG", quality=95, exif=exif.tobytes()), PREP)
    assert_color(pixels[:12], RED, tolerance=12)
    assert_color(pixels[-12:], BLUE, tolerance=12)
    # Without the tag the same pixels come out sideways: the tag is what made it upright.
    sideways = prepare(encode(stored, "JPEG", quality=95), PREP)
    assert_color(sideways[:, :12], RED, tolerance=12)


def test_center_crop_keeps_the_middle_and_squash_keeps_everything() -> None:
    image = Image.new("RGB", (90, 30), BLUE)
    image.paste(RED, (30, 0, 60, 30))
    data = encode(image, "PNG")
    assert_color(prepare(data, Preprocessing(32, "center_crop")), RED, tolerance=1)
    squashed = prepare(data, Preprocessing(32, "squash"))
    assert_color(squashed[:, :8], BLUE, tolerance=1)
    assert_color(squashed[:, 12:20], RED, tolerance=1)


def test_prepare_matches_a_plain_pillow_resize_for_a_flower(flowers_dir: Path) -> None:
    photo = sorted((flowers_dir / "daisy").glob("*.jpg"))[0]
    pixels = prepare(photo.read_bytes(), Preprocessing(224))
    reference = np.asarray(Image.open(str(photo)).convert("RGB").resize((224, 224), Image.BILINEAR))
    # JPEG draft decoding at a reduced DCT scale differs slightly from a full decode.
    assert np.abs(pixels.astype(int) - reference.astype(int)).mean() < 4


def test_distorted_views_are_reproducible_and_differ() -> None:
    data = encode(
        Image.fromarray(np.random.RandomState(1).randint(0, 256, (50, 70, 3)).astype(np.uint8)), "PNG"
    )
    distortion = Distortion(flip_left_right=True, random_crop=20, random_scale=20, random_brightness=20)
    first = prepare(data, PREP, distortion=distortion, seed=3)
    assert np.array_equal(first, prepare(data, PREP, distortion=distortion, seed=3))
    assert not np.array_equal(first, prepare(data, PREP, distortion=distortion, seed=4))
    assert not np.array_equal(first, prepare(data, PREP))


@pytest.mark.parametrize(
    "name, data",
    [
        ("empty", b""),
        ("text", b"daisy, 12 petals\n"),
        ("corrupt jpeg", corrupt_jpeg()),
    ],
)
def test_unreadable_bytes_raise_invalid_image(name: str, data: bytes) -> None:
    with pytest.raises(InvalidImage) as info:
        prepare(data, PREP)
    assert info.value.detail


def test_truncated_jpeg_raises_invalid_image(flowers_dir: Path) -> None:
    photo = sorted((flowers_dir / "roses").glob("*.jpg"))[0]
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        prepare(truncated(photo.read_bytes()), Preprocessing(224))


def test_unsupported_format_and_pixel_limit() -> None:
    with pytest.raises(InvalidImage, match="TIFF"):
        prepare(solid(RED, fmt="TIFF"), PREP)
    with pytest.raises(InvalidImage, match="over the limit"):
        prepare(solid(RED, size=(100, 100)), PREP, max_pixels=5000)


def test_every_image_suffix_has_one_media_type() -> None:
    """One table serves datasets, the review inbox and a job's misclassified copies."""
    from poets.engine.data.images import IMAGE_SUFFIXES, MEDIA_TYPES, SUFFIX_BY_FORMAT

    assert sorted(MEDIA_TYPES) == sorted(IMAGE_SUFFIXES)
    assert set(SUFFIX_BY_FORMAT.values()) <= set(MEDIA_TYPES)
    assert all(media.startswith("image/") for media in MEDIA_TYPES.values())
