"""Decode one herbarium image safely and store the paper's two normalised copies.

Every image is decoded once: JPEGs through Pillow's ``draft()`` (the decoder skips
detail the 1024 px copy cannot show, 4–7× faster on big scans), other big images shrunk
by an integer factor in their own mode, then converted to 8-bit RGB whatever they were
(CMYK, 16-bit, palette, alpha), then stored as a copy at most 1024 px wide (aspect kept,
never upscaled) and the 256×256 training copy (squeezed, as the paper did). Bad files
raise :class:`ImageRejected` with a one-line reason; the build turns that into a
quarantine entry instead of an abort.

Every image herbid reads is opened by :func:`open_image`, so that herbid's pixel limit
(``DEFAULT_MAX_PIXELS`` or ``--max-pixels``), not Pillow's 89.5 MP default, decides
what is a decompression bomb.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from herbid.data.dataset_folder import IMAGES, LARGE_WIDTH, TRAIN_SIZE, atomic_path
from herbid.data.phash import PHASH_SIZE
from herbid.data.safe_files import DEFAULT_MAX_FILE_BYTES, FileRefused, read_regular_file

#: Default cap on decoded pixels; real scans reach ~100 MP, bombs are far beyond.
DEFAULT_MAX_PIXELS = 250_000_000
JPEG_QUALITY = 92
#: Upper estimate of the bytes a decode holds per decoded pixel (peak RSS growth, upload
#: bytes aside): the worst case measured, a palette PNG with transparency shrunk 2×, is
#: 10.0; 16-bit grey sheets take ~4, RGB ~5, a baseline JPEG almost nothing.
DECODE_BYTES_PER_PIXEL = 11
#: Modes with more than 8 bits a sample, scaled (not clipped) to 8 bits.
HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
#: Rows converted at a time from 16/32-bit to 8-bit: no full-size float64 copy.
_EIGHT_BIT_BLOCK_ROWS = 256
#: EXIF orientation → the transpose that makes the pixels upright (as ImageOps.exif_transpose).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageRejected(Exception):
    """An input that cannot become a dataset image; the message is the reason."""


class ImageTooLarge(ImageRejected):
    """More pixels than a caller's decode cap (the web server's upload limit): the file may be
    fine, it is only too big to decode here (the server answers 413, not 422)."""


@dataclass
class StoredImage:
    """What the build records about an image it stored."""

    image_id: str
    sha256: str
    phash: str
    width: int
    height: int
    image_path: str
    large_image_path: str
    conversions: list[str] = field(default_factory=list)


def image_id_for(sha256: str) -> str:
    """Content-addressed id: byte-identical files get the same id (stored once)."""
    return sha256[:16]


def stored_paths(image_id: str) -> tuple[str, str, str]:
    """Relative paths of the 256 copy, the large copy and the metadata sidecar.

    Sharded by the first two hex digits so that no folder holds millions of files.
    """
    shard = image_id[:2]
    return (
        f"{IMAGES}/{TRAIN_SIZE}/{shard}/{image_id}.jpg",
        f"{IMAGES}/{LARGE_WIDTH}/{shard}/{image_id}.jpg",
        f"{IMAGES}/meta/{shard}/{image_id}.json",
    )


def _defer_pillow_bomb_check(max_pixels: int) -> None:
    """Raise Pillow's own decompression-bomb limit to herbid's, so that herbid's limit decides.

    Pillow checks inside ``Image.open``, before herbid sees the header: a warning above
    ``Image.MAX_IMAGE_PIXELS`` (89.5 MP by default; herbid used to turn it into an error)
    and an error above twice that. A real 90 MP scan was refused although herbid allows
    250 MP. With the limit at herbid's, Pillow only complains about images herbid refuses
    anyway. The setting is process-wide, so it is only ever raised, up to the largest
    limit herbid was asked for, and never put back (that would race with other threads);
    ``None`` (Pillow's check switched off by the embedding program) is left alone.
    """
    with _PILLOW_LIMIT_LOCK:
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels


def _too_many_pixels(size: str, max_pixels: int) -> ImageRejected:
    return ImageRejected(f"too many pixels ({size} > {max_pixels:,}); possible decompression bomb")


def open_image(source: bytes | str | Path | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image lazily (header only) under herbid's pixel limit; herbid opens every image here.

    Raises :class:`ImageRejected` when width × height exceeds ``max_pixels``, before any
    pixel is decoded. Other failures (not an image, unreadable) are Pillow's own
    exceptions: callers decide what they mean.
    """
    if max_pixels < 1:
        raise ValueError("max_pixels must be positive")
    _defer_pillow_bomb_check(max_pixels)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        image = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # only beyond herbid's limit now (the warning is an error only under -W error)
        raise _too_many_pixels(f"more than {Image.MAX_IMAGE_PIXELS or max_pixels:,}", max_pixels) from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _too_many_pixels(f"{width}×{height}", max_pixels)
    return image


def decoded_pixels(image: Image.Image, header_size: tuple[int, int]) -> int:
    """How many pixels the decoder holds at full resolution for ``image`` (after any ``draft``).

    A baseline JPEG decodes row by row at its reduced draft scale; a progressive JPEG keeps
    coefficients for every pixel of the header size, as every other format decodes whole.
    """
    progressive = image.info.get("progressive") or image.info.get("progression")
    width, height = image.size if image.format == "JPEG" and not progressive else header_size
    return width * height


def check_decode_cap(image: Image.Image, header_size: tuple[int, int], max_decoded_pixels: int) -> None:
    """Raise :class:`ImageTooLarge` if decoding ``image`` would hold more than ``max_decoded_pixels``."""
    held = decoded_pixels(image, header_size)
    if held > max_decoded_pixels:
        width, height = header_size
        raise ImageTooLarge(
            f"too large to decode here: {width}×{height} needs {held / 1e6:.1f} MP decoded, over this "
            f"server's {max_decoded_pixels / 1e6:.1f} MP upload limit (--max-upload-pixels); send a smaller copy")


def shrink_factor(size: tuple[int, int], target_width: int) -> int:
    """The integer reduction that keeps the short side ≥ 2 × ``target_width`` (1 = none).

    The short side, because EXIF may turn the image; the 2× gap keeps the final bicubic
    resize as good as a fair one (Pillow's ``reducing_gap`` advice).
    """
    return max(1, min(size) // (2 * target_width))


def decode_rgb(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, target_width: int = LARGE_WIDTH,
               max_decoded_pixels: int | None = None) -> tuple[Image.Image, tuple[int, int], list[str]]:
    """Decode bytes to an 8-bit RGB image no bigger than needed for ``target_width``.

    Returns the image, the original (width, height) and the conversions applied.
    ``max_pixels`` is the decompression-bomb limit on the header size; ``max_decoded_pixels``
    (the web server's cap) also bounds what the decoder must hold (see :func:`decoded_pixels`)
    and raises :class:`ImageTooLarge` beyond it. Both are checked before any pixel is decoded.
    """
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the pixels are fine
            image = open_image(data, max_pixels)
            original = image.size
            if image.format == "JPEG" and original[0] > target_width:
                scaled_height = max(1, round(original[1] * target_width / original[0]))
                image.draft("RGB", (target_width, scaled_height))
            if max_decoded_pixels is not None:
                check_decode_cap(image, original, max_decoded_pixels)
            image.load()
            upright = _upright_transpose(image)  # read now: a shrunk copy loses e.g. TIFF tags
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # e.g. a GIF frame, a TIFF tile
        raise _too_many_pixels("a frame or tile beyond the limit", max_pixels) from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc) or type(exc).__name__
        if "truncated" in message.lower():
            raise ImageRejected("truncated image") from None
        raise ImageRejected(f"corrupt image: {message}") from None
    rgb, conversions = to_rgb(image, shrink_factor(image.size, target_width))
    if upright is not None:
        rgb = rgb.transpose(upright)  # after the shrink: a full-size turn would be a full-size copy
    return rgb, original, conversions


def _upright_transpose(image: Image.Image) -> Image.Transpose | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a broken EXIF block must not lose the image
        return None


def shrink(image: Image.Image, factor: int) -> Image.Image:
    """Reduce by the integer ``factor`` (box average) in the image's own mode."""
    if factor < 2:
        return image
    try:
        return image.reduce(factor)
    except ValueError:  # I;16 has no reduce(); box resampling in its own mode is the same average
        return image.resize((max(1, image.width // factor), max(1, image.height // factor)), Image.Resampling.BOX)


def _eight_bit(image: Image.Image, mode: str) -> Image.Image:
    """16/32-bit greyscale to 8-bit L, scaled from 0–65535 (or 0–255), a block of rows at a
    time: a whole-image float64 array is 8 bytes a pixel, the result is 1."""
    top = 65535.0 if mode.startswith("I;16") or image.getextrema()[1] > 255 else 255.0
    width, height = image.size
    eight_bit = np.empty((height, width), dtype=np.uint8)
    for start in range(0, height, _EIGHT_BIT_BLOCK_ROWS):
        stop = min(start + _EIGHT_BIT_BLOCK_ROWS, height)
        block = np.asarray(image.crop((0, start, width, stop)), dtype=np.float64)
        eight_bit[start:stop] = np.clip(block / top * 255.0 + 0.5, 0, 255)
    return Image.fromarray(eight_bit)


def to_rgb(image: Image.Image, factor: int = 1) -> tuple[Image.Image, list[str]]:
    """Any Pillow mode to 8-bit RGB, shrunk by the integer ``factor`` first; alpha is
    composited on white paper.

    The shrink runs before any mode conversion, in the image's own mode, because every
    conversion copies the whole image: a 16-bit 88 MP sheet cost 2.1 GB as float64 copies.
    Palette and 1-bit pixels cannot be averaged, so those are expanded first.
    """
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "1":
        image = image.convert("L")
    image = shrink(image, factor)
    if mode == "RGB":
        return image, []
    if mode in HIGH_BIT_MODES:
        return _eight_bit(image, mode).convert("RGB"), [f"{mode} (16/32-bit) → 8-bit RGB"]
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        # pasting through the alpha band onto white RGB gives alpha_composite's pixels
        # exactly, without its two extra full-size RGBA copies
        rgba = image if image.mode in {"RGBA", "LA"} else image.convert("RGBA")
        paper = Image.new("RGB", rgba.size, (255, 255, 255))
        paper.paste(rgba, mask=rgba)
        return paper, [f"{mode} alpha composited on white"]
    # greyscale and 1-bit scans are common and lose nothing: not worth a report entry
    notes = [] if mode in {"L", "1"} else [f"{mode} → RGB"]
    return (image if image.mode == "RGB" else image.convert("RGB")), notes


def resize_copies(rgb: Image.Image) -> tuple[Image.Image, Image.Image]:
    """The large copy (≤1024 px wide, aspect kept) and the 256×256 training copy."""
    width, height = rgb.size
    if width > LARGE_WIDTH:
        # bicubic (antialiased in Pillow) is visually on par with Lanczos for these
        # 1–4× reductions and 25 % faster; resizing is the costliest step of a build
        large = rgb.resize((LARGE_WIDTH, max(1, round(height * LARGE_WIDTH / width))), Image.Resampling.BICUBIC)
    else:
        large = rgb
    small = large.resize((TRAIN_SIZE, TRAIN_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return large, small


def encode_jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def perceptual_hash(image: Image.Image) -> str:
    """256-bit DCT perceptual hash (64 hex digits) for near-duplicate detection.

    See :mod:`herbid.data.phash` for why 256 bits rather than the usual 64.
    """
    import imagehash

    return str(imagehash.phash(image, hash_size=PHASH_SIZE))


def store_image(source: Path, dataset_dir: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> StoredImage:
    """Decode ``source`` once and store both copies under ``dataset_dir`` (resumable).

    If the content was stored by an earlier (possibly interrupted) run, nothing is
    decoded again: the sidecar written last marks a finished image. Only a regular file
    of at most ``max_bytes`` is read (never a pipe or a device).
    """
    try:
        data = read_regular_file(source, max_bytes)
    except FileRefused as exc:
        raise ImageRejected(str(exc)) from None
    except FileNotFoundError:
        raise ImageRejected("missing file") from None
    except IsADirectoryError:
        raise ImageRejected("not a file") from None
    except OSError as exc:
        raise ImageRejected(f"unreadable file: {exc.strerror or exc}") from None
    sha256 = hashlib.sha256(data).hexdigest()
    image_id = image_id_for(sha256)
    small_rel, large_rel, meta_rel = stored_paths(image_id)
    meta_path = dataset_dir / meta_rel
    if meta_path.exists():
        try:
            return StoredImage(**json.loads(meta_path.read_text()))
        except (ValueError, TypeError):
            pass  # unreadable sidecar: redo the image
    rgb, (width, height), conversions = decode_rgb(data, max_pixels=max_pixels)
    large, small = resize_copies(rgb)
    for image, rel in ((large, large_rel), (small, small_rel)):
        with atomic_path(dataset_dir / rel) as tmp:
            tmp.write_bytes(encode_jpeg(image))
    stored = StoredImage(
        image_id=image_id,
        sha256=sha256,
        phash=perceptual_hash(small),
        width=width,
        height=height,
        image_path=small_rel,
        large_image_path=large_rel,
        conversions=conversions,
    )
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(asdict(stored)))
    return stored
