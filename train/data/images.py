"""Image decoding for training and evaluation (PIL, torch-free).

The dataset readers (:mod:`det_toolkit.train.data.formats`) record image sizes *as displayed*, with
the EXIF orientation applied; :func:`load_rgb` decodes pixels in that same orientation, so boxes and
pixels agree for photos taken with a rotated camera. Used by the training dataset
(:mod:`det_toolkit.train.data.dataset`) and by det-eval (:mod:`det_toolkit.train.evaluate`), which
must run without PyTorch.

Truncated files follow the policy of :func:`det_toolkit.runtime.image_bytes.truncated_image`: a truncated
JPEG is decoded with its missing bottom rows grey, other truncated formats are unreadable. The
readers count the truncated files in the data report; this module only decodes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from det_toolkit.runtime.image_bytes import JPEG_EOI


def _open_decoded(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``; a truncated JPEG is decoded as far as its data goes.

    PIL refuses a truncated file unless its module-global switch ``ImageFile.LOAD_TRUNCATED_IMAGES``
    is set, and for a JPEG all that switch does is hand libjpeg an end-of-image marker where the
    file ends early (``JpegImagePlugin.load_read``). Appending that marker to the bytes gives the
    same pixels (libjpeg fills the missing blocks grey, as OpenCV's ``imread`` does) without a
    process-wide switch that would also change every other decode, in every thread.

    Raises:
        OSError / PIL.UnidentifiedImageError: unreadable file, or a truncated file that is not a JPEG.
    """
    im = Image.open(path)
    try:
        im.load()
        return im
    except OSError as e:
        fmt = im.format
        im.close()
        if fmt != "JPEG" or "truncated" not in str(e):
            raise
    im = Image.open(io.BytesIO(Path(path).read_bytes() + JPEG_EOI))
    im.load()
    return im


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image as ``uint8 [H, W, 3]`` RGB with EXIF orientation applied.

    Grayscale, palette and RGBA images are converted to RGB; the array is writable (``torch.from_numpy``
    needs that). A truncated JPEG decodes with grey bottom rows (:func:`_open_decoded`).

    Raises:
        OSError / PIL.UnidentifiedImageError: unreadable file, or a truncated PNG/BMP/WebP/TIFF.
    """
    with _open_decoded(path) as im:
        return np.array(ImageOps.exif_transpose(im).convert("RGB"))
