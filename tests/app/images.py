"""Images made on the fly for the API tests (valid-but-unusual ones and broken ones)."""

import io
from typing import Any

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def noise(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    if mode == "CMYK":
        return noise(width, height, "RGB", seed).convert("CMYK")
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.randint(0, 256, (height, width, channels), dtype=np.uint8)
    if channels == 1:
        return Image.fromarray(pixels[:, :, 0], "L")
    return Image.fromarray(pixels, mode)


def animated_gif() -> bytes:
    frames = [noise(64, 48, seed=i).convert("P") for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def png_16bit() -> bytes:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    image = Image.fromarray(pixels)
    assert image.mode.startswith("I;16")
    return encode(image, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(noise(80, 60, "CMYK"), "JPEG")


def rgba_png() -> bytes:
    return encode(noise(50, 70, "RGBA"), "PNG")


def palette_transparent_png() -> bytes:
    image = noise(40, 40).convert("P")
    return encode(image, "PNG", transparency=0)


def one_pixel() -> bytes:
    return encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG")


def very_wide() -> bytes:
    return encode(noise(4000, 6), "JPEG")


def exif_rotated() -> bytes:
    image = noise(120, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return encode(image, "JPEG", exif=exif.tobytes())


def bmp() -> bytes:
    return encode(noise(30, 20), "BMP")


def webp() -> bytes:
    return encode(noise(30, 20), "WEBP")


def bomb_png(side: int) -> bytes:
    """A tiny file that decodes to side x side pixels."""
    return encode(Image.new("L", (side, side)), "PNG", optimize=True)


def truncated_jpeg(data: bytes) -> bytes:
    return data[: len(data) // 2]
