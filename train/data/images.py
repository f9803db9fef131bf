"""Image decoding for training and evaluation (PIL, torch-free).

The dataset readers (:mod:`det_toolkit.train.data.formats`) record image sizes *as displayed*, with
the EXIF orientation applied; :func:`load_rgb` decodes pixels in that same orientation, so boxes and
pixels agree for photos taken with a rotated camera. Used by the training dataset
(:mod:`det_toolkit.train.data.dataset`) and by det-eval (:mod:`det_toolkit.train.evaluate`), which
must run without PyTorch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def load_rgb(path: str) -> np.ndarray:
    """Decode an image as ``uint8 [H, W, 3]`` RGB with EXIF orientation applied.

    Grayscale, palette and RGBA images are converted to RGB; the array is writable (``torch.from_numpy``
    needs that).

    Raises:
        OSError / PIL.UnidentifiedImageError: unreadable or truncated file.
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.array(im.convert("RGB"))
