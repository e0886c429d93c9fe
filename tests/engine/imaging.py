"""Small encoded images made on the fly, for tests of decoding and bad inputs."""

import io
from pathlib import Path
from typing import Any, Tuple

import numpy as np
from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def solid(
    color: Tuple[int, int, int], size: Tuple[int, int] = (64, 48), fmt: str = "JPEG", **options: Any
) -> bytes:
    return encode(Image.new("RGB", size, color), fmt, **options)


def noise_jpeg(size: Tuple[int, int] = (96, 80), seed: int = 0) -> bytes:
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)
    return encode(Image.fromarray(pixels, "RGB"), "JPEG", quality=90)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def corrupt_jpeg() -> bytes:
    """A JPEG start-of-image marker followed by garbage."""
    return b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]
