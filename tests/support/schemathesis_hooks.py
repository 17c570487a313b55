"""Real images for schemathesis: the upload routes declare their file parts as images (`encoding.contentType` in the
OpenAPI schema), and these strategies make schemathesis send images of those types instead of arbitrary bytes.

Imported by `tests/serving/test_serving.py`; for the command line:

    SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks st run --checks all http://127.0.0.1:8000/openapi.json
"""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

from serving.routes.predict import IMAGE_MEDIA_TYPES

# Pillow's encoder and the modes it can write in each format.
FORMATS = {
    "image/png": ("PNG", ("L", "LA", "RGB", "RGBA", "P", "1", "I;16")),
    "image/jpeg": ("JPEG", ("L", "RGB", "CMYK")),
    "image/gif": ("GIF", ("L", "P")),
    "image/bmp": ("BMP", ("L", "RGB", "P", "1")),
    "image/tiff": ("TIFF", ("L", "RGB", "RGBA", "I;16", "F")),
    "image/webp": ("WEBP", ("RGB", "RGBA")),
}


@st.composite
def images(draw: st.DrawFn, media_type: str) -> bytes:
    """An encoded image of `media_type`: any size from 1x1 to 96x96, any of the format's modes, random or flat."""
    fmt, modes = FORMATS[media_type]
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
    if draw(st.booleans()):
        grey[:] = grey[0, 0]  # a flat frame: nothing to classify, still an image
    image = Image.fromarray(grey, "L").convert(mode if mode not in ("I;16", "F") else "L")
    if mode in ("I;16", "F"):
        image = image.convert("I").convert(mode) if mode == "F" else Image.fromarray(grey.astype(np.uint16) * 257)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


for _media_type in IMAGE_MEDIA_TYPES:
    schemathesis.openapi.media_type(_media_type, images(_media_type))
