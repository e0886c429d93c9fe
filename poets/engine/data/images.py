"""Image decoding and preprocessing: the one path shared by training and serving.

Training computes bottlenecks from :func:`prepare` and serving labels what
:func:`prepare` returns, with the same :class:`Preprocessing` (stored in each
model's metadata), so a head never sees features made differently from the ones
it was trained on. Normalisation to the backbone's range happens inside the
model graph, which takes ``uint8`` pixels.
"""

import hashlib
import io
import random
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps

from poets.engine.errors import InvalidImage

# Formats Poets reads. MPO is what many cameras write for JPEG.
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# The file name suffix for each format Poets reads, for images it stores (datasets, the
# review inbox, a job's misclassified images).
SUFFIX_BY_FORMAT = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "BMP": ".bmp",
    "WEBP": ".webp",
}
# The media type of each suffix in IMAGE_SUFFIXES, for serving stored images (datasets,
# the review inbox, a job's misclassified images).
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
}
DEFAULT_MAX_PIXELS = 40000000

# Truncated files must fail loudly, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

try:
    _BILINEAR = Image.Resampling.BILINEAR
    _FLIP_LEFT_RIGHT = Image.Transpose.FLIP_LEFT_RIGHT
except AttributeError:  # Pillow < 9.1 (Python 3.6) has only the old names
    _BILINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    _FLIP_LEFT_RIGHT = Image.FLIP_LEFT_RIGHT  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become the backbone's input.

    Attributes:
        size: side of the square input (224 for MobileNet 224, 299 for Inception v3).
        resize: ``squash`` resizes the whole image to a square as TensorFlow for Poets
            does; ``center_crop`` keeps the aspect ratio and crops the central square.
        mean: subtracted from each channel value inside the graph.
        std: divides each channel value inside the graph.
    """

    size: int
    resize: str = "squash"
    mean: float = 127.5
    std: float = 127.5

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Preprocessing":
        return cls(
            int(data["size"]),
            str(data.get("resize", "squash")),
            float(data.get("mean", 127.5)),
            float(data.get("std", 127.5)),
        )

    def fingerprint(self) -> str:
        """Identifies the pixels this produces; part of every bottleneck's cache key."""
        text = "v1|{}|{}".format(self.size, self.resize)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Distortion:
    """TensorFlow for Poets' distortions, in percent, applied to one training view."""

    flip_left_right: bool = False
    random_crop: int = 0
    random_scale: int = 0
    random_brightness: int = 0

    @property
    def active(self) -> bool:
        return bool(self.flip_left_right or self.random_crop or self.random_scale or self.random_brightness)

    def fingerprint(self) -> str:
        return "f{:d}c{}s{}b{}".format(
            self.flip_left_right, self.random_crop, self.random_scale, self.random_brightness
        )


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open encoded bytes lazily, refusing what is not a supported image or too big.

    Only the header is read here; pixels are decoded by :func:`to_rgb`.
    """
    if not data:
        raise InvalidImage("The image is empty: send the bytes of a JPEG, PNG, GIF, BMP or WebP file.")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InvalidImage(
            "The image has too many pixels to decode safely: resize it below {} pixels.".format(max_pixels)
        ) from None
    except Exception:
        raise InvalidImage(
            "This is not an image Poets can read: send a JPEG, PNG, GIF, BMP or WebP file."
        ) from None
    if image.format not in FORMATS:
        raise InvalidImage(
            "Image format {} is not supported: send a JPEG, PNG, GIF, BMP or WebP file.".format(image.format)
        )
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise InvalidImage(
            "The image is {}x{} = {} pixels, over the limit of {}: resize it first.".format(
                width, height, width * height, max_pixels
            )
        )
    return image


def to_rgb(image: Image.Image, draft: Optional[int] = None) -> Image.Image:
    """Decode to upright 8-bit RGB.

    Args:
        image: from :func:`open_image`, not yet loaded.
        draft: when set, a JPEG is decoded at the smallest DCT scale whose sides stay
            at least this long: a 1280x720 frame costs a quarter of a full decode.
    """
    try:
        if draft and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft, draft))
        image = ImageOps.exif_transpose(image)
        image.load()
    except Exception:
        raise InvalidImage("The image data is corrupt or truncated: send the complete file.") from None
    try:
        return _convert(image)
    except Exception:
        raise InvalidImage(
            "The image's colour mode ({}) cannot be converted to RGB: save it as "
            "an ordinary RGB or greyscale image.".format(image.mode)
        ) from None


def _convert(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit greyscale (PNG gives I;16, older Pillow I): scale 0..65535 to 8 bits
        # instead of clipping to white. Judging by the brightest pixel would turn a
        # dark 16-bit image into a bright one.
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0
        grey = np.clip(pixels * scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels are shown as a viewer would: over white.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


Box = Tuple[float, float, float, float]


def _crop_box(width: int, height: int, prep: Preprocessing) -> Box:
    if prep.resize == "center_crop":
        side = min(width, height)
        left, top = (width - side) / 2.0, (height - side) / 2.0
        return (left, top, left + side, top + side)
    return (0.0, 0.0, float(width), float(height))


def _distort(
    image: Image.Image, box: Box, prep: Preprocessing, distortion: Distortion, rng: random.Random
) -> np.ndarray:
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    # As in TensorFlow for Poets: enlarge by the crop margin and a random scale, then
    # take a random window of the input's size, i.e. a window of this fraction.
    scale = (1.0 + distortion.random_crop / 100.0) * rng.uniform(1.0, 1.0 + distortion.random_scale / 100.0)
    crop_w, crop_h = width / scale, height / scale
    x0 = left + rng.uniform(0.0, width - crop_w)
    y0 = top + rng.uniform(0.0, height - crop_h)
    out = image.resize((prep.size, prep.size), _BILINEAR, box=(x0, y0, x0 + crop_w, y0 + crop_h))
    if distortion.flip_left_right and rng.random() < 0.5:
        out = out.transpose(_FLIP_LEFT_RIGHT)
    pixels = np.asarray(out, dtype=np.uint8)
    if distortion.random_brightness:
        factor = rng.uniform(
            1.0 - distortion.random_brightness / 100.0, 1.0 + distortion.random_brightness / 100.0
        )
        pixels = np.clip(pixels.astype(np.float32) * factor + 0.5, 0, 255).astype(np.uint8)
    return pixels


def prepare(
    data: bytes,
    prep: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    distortion: Optional[Distortion] = None,
    seed: int = 0,
) -> np.ndarray:
    """Encoded image bytes to the model's ``uint8`` input of shape (size, size, 3).

    Args:
        data: the encoded file.
        prep: the model's preprocessing.
        max_pixels: refuse larger images (decompression bombs).
        distortion: for augmented training views only; serving never passes one.
        seed: makes a distorted view reproducible, so it can be cached.

    Raises:
        InvalidImage: the bytes are not a readable image, or too large.
    """
    image = to_rgb(open_image(data, max_pixels), draft=prep.size)
    box = _crop_box(image.width, image.height, prep)
    if distortion is not None and distortion.active:
        return _distort(image, box, prep, distortion, random.Random(seed))
    resized = image.resize((prep.size, prep.size), _BILINEAR, box=box)
    return np.asarray(resized, dtype=np.uint8)
