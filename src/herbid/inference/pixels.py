"""The evaluation pixel path: from a stored copy or an upload to the tensor a model sees.

Training, evaluation, identification, the similar-specimen index and the web app all read
a sheet through these functions, so an uploaded original and its stored dataset copy give
identical input tensors (``tests/test_identify.py``) and a bundle's test accuracy applies
to what users upload. Training's random augmentation (``herbid.training.data``) builds on
the same readers and tensor conversion.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from herbid.data.dataset_folder import TRAIN_SIZE
from herbid.data.imaging import DEFAULT_MAX_PIXELS, decode_rgb, encode_jpeg, open_image, resize_copies
from herbid.errors import InvalidOption
from herbid.models.base import Preprocessing, sheet_shape

# ------------------------------------------------------------------------ images


def needs_large_copy(resize_size: int, aspect: float = 1.0) -> bool:
    """Whether a ``resize_size`` (width) image of this aspect is read from the ≤1024 px copy
    rather than the 256 px one."""
    return max(sheet_shape(resize_size, aspect)) > TRAIN_SIZE


def read_squeezed(source: str | Path | BinaryIO, resize_size: int, aspect: float = 1.0) -> Image.Image:
    """An image file as RGB, resized to ``sheet_shape(resize_size, aspect)`` (no aspect kept).

    With ``aspect`` 1 that is the paper's square squeeze. Otherwise an image whose
    orientation differs from the target's (a landscape photo of a sheet for a portrait
    target) is first turned by 90°, so it is not squashed to a third of its height. JPEG
    ``draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale when that is still at least
    the target size, which is much faster than decoding everything and resizing.
    """
    width, height = sheet_shape(resize_size, aspect)
    with open_image(source) as image:  # herbid's pixel limit, not Pillow's default
        image.draft("RGB", (width, height))
        rgb = image.convert("RGB")
    if aspect != 1.0 and (rgb.height > rgb.width) != (height > width):
        rgb = rgb.transpose(Image.Transpose.ROTATE_90)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.BILINEAR)
    return rgb


def load_image(dataset_dir: Path, image_path: str, large_image_path: str | None, resize_size: int,
               aspect: float = 1.0) -> Image.Image:
    """A manifest row's sheet as :func:`read_squeezed` gives it.

    Up to the stored 256×256 copy that copy is read; larger sizes come from the ≤1024 px copy.
    """
    use_large = needs_large_copy(resize_size, aspect) and large_image_path
    return read_squeezed(dataset_dir / (large_image_path if use_large else image_path), resize_size, aspect)


def squeezed_copy(jpeg: bytes, resize_size: int, aspect: float = 1.0) -> Image.Image:
    """Read a stored-copy JPEG as :func:`load_image` reads the file.

    The same function reads both (``draft`` then bilinear squeeze), so that an upload and
    its dataset copy give the same pixels; ``tests/test_identify.py`` checks the equality.
    """
    return read_squeezed(io.BytesIO(jpeg), resize_size, aspect)


def upload_image(data: bytes, transform: EvalTransform, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                 max_decoded_pixels: int | None = None) -> Image.Image:
    """An uploaded file's bytes as the resized sheet ``transform`` crops, through the dataset
    build's own steps: decode, the stored copies (≤1024 px, 256×256), JPEG round trip of the
    one copy needed, read back as a stored file is read. Raises ``ImageRejected``
    (``ImageTooLarge`` beyond ``max_decoded_pixels``, the web server's decode cap).
    """
    rgb, _, _ = decode_rgb(data, max_pixels=max_pixels, max_decoded_pixels=max_decoded_pixels)
    large, small = resize_copies(rgb)
    copy = large if needs_large_copy(transform.resize_size, transform.aspect) else small
    return squeezed_copy(encode_jpeg(copy), transform.resize_size, transform.aspect)


def upload_tensor(data: bytes, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS, *,
                  max_decoded_pixels: int | None = None) -> torch.Tensor:
    """An uploaded file's bytes as the normalised (3, H, W) model input of ``preprocessing``."""
    transform = eval_transform(preprocessing)
    return transform(upload_image(data, transform, max_pixels, max_decoded_pixels=max_decoded_pixels))


# -------------------------------------------------------------------- transforms


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """HWC uint8 → CHW float32 in [0, 1].

    Done in numpy: in a loader worker torch's element-wise kernels pay thread-pool
    overhead that costs more than the arithmetic on one image (10× slower measured).
    """
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32)
    chw /= np.float32(255.0)
    return chw


def normalize_chw(chw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    chw -= mean
    chw /= std
    return torch.from_numpy(chw)


def to_normalized_tensor(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """HWC uint8 → CHW float32 ``(x / 255 − mean) / std`` (torchvision's ToTensor + Normalize)."""
    return normalize_chw(to_unit_float(pixels), mean, std)


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1),
                np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1))


class EvalTransform:
    """Centre ``input_size`` crop of the ``resize_size`` image, normalise (Caffe's TEST phase)."""

    uses_rng = False

    def __init__(self, input_size: int, resize_size: int, mean: Sequence[float], std: Sequence[float],
                 aspect: float = 1.0) -> None:
        if input_size > resize_size:
            raise InvalidOption(f"input_size {input_size} is larger than resize_size {resize_size}")
        self.input_size, self.resize_size, self.aspect = input_size, resize_size, aspect
        self.crop_width, self.crop_height = sheet_shape(input_size, aspect)
        self.mean, self.std = Normalization(tuple(mean), tuple(std)).arrays()

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        pixels = np.asarray(image)
        height, width = pixels.shape[:2]
        top = (height - self.crop_height) // 2
        left = (width - self.crop_width) // 2
        return to_normalized_tensor(pixels[top:top + self.crop_height, left:left + self.crop_width],
                                     self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalTransform(centre {self.input_size} of {self.resize_size}, aspect={self.aspect})"


def resolved_sizes(preprocessing: Preprocessing, input_size: int | None, resize_size: int | None) -> tuple[int, int]:
    """The (input, resize) sizes actually used: explicit values, else the model's.

    An explicit input size without a resize size keeps the model's crop ratio
    (224 of 256 → 448 of 512).
    """
    if input_size is None:
        input_size = preprocessing.input_size
        resize_size = resize_size or preprocessing.resize_size
    elif resize_size is None:
        resize_size = round(input_size * preprocessing.resize_size / preprocessing.input_size)
    return int(input_size), int(resize_size)


def eval_transform(preprocessing: Preprocessing, input_size: int | None = None,
                   resize_size: int | None = None) -> EvalTransform:
    size, resize = resolved_sizes(preprocessing, input_size, resize_size)
    return EvalTransform(size, resize, preprocessing.mean, preprocessing.std, preprocessing.aspect)
