"""Images for the upload and service tests: real Fashion-MNIST test images as files, and a decompression bomb."""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import numpy as np
from PIL import Image

from fmnist.core.data import load_dataset


@cache
def real_test_images(count: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images (uint8, 28x28) and labels of the real Fashion-MNIST test set."""
    test_images, test_labels = load_dataset(download=False).test_split()
    return test_images[:count].copy(), test_labels[:count].astype(int)


def encode(pixels: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """An array or Pillow image as file bytes."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit gray pixels: decoding it would need gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 16)  # a few rows; the rest would come from the decoder's padding
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
