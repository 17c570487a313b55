"""Hostile uploads, made on the spot: small files that claim or cost far more than their bytes. Used by
`serve_faults.py` and the tests that check each bound (`tests/images/test_uploads.py`, the service's fault tests).

Each maker returns the file's bytes; the comments say what each costs a decoder without the service's bounds.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
from PIL import Image


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def grey_png(side: int = 6000) -> bytes:
    """A flat grey PNG: a few kB that inflate to `side` squared pixels."""
    return encoded(Image.new("L", (side, side), 128), "PNG")


def deep_png(side: int = 6320) -> bytes:
    """A flat 16-bit PNG: a few kB that inflate to `side` squared 16-bit pixels."""
    return encoded(Image.fromarray(np.full((side, side), 3000, np.uint16)), "PNG")


def many_frames(kind: str, frames: int = 200, side: int = 1000) -> bytes:
    """A `frames`-frame GIF or TIFF of `side` pixels square, alternating two greys (so no frame is dropped)."""
    images = [Image.new("L", (side, side), 60 + 100 * (i % 2)) for i in range(frames)]
    options = {"compression": "tiff_deflate"} if kind == "TIFF" else {}  # small files, as an attacker sends
    return encoded(images[0], kind, save_all=True, append_images=images[1:], **options)


def ico_claiming_16x16(side: int = 6000) -> bytes:
    """An ICO whose directory says 16x16 and whose embedded PNG is `side` squared: Pillow's ICO opener decodes the
    embedded image while opening, before any size check could see the real size."""
    inner = grey_png(side)
    header = struct.pack("<HHH", 0, 1, 1)  # reserved, type 1 (icon), one image
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 6 + 16)  # 16x16, 32 bpp, size, offset
    return header + entry + inner


def ramp_rgb(side: int) -> Image.Image:
    """A smooth colour picture `side` pixels square: compresses well, decodes like a photo of that size."""
    ramp = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))  # (side, side)
    return Image.fromarray(np.stack([ramp, ramp.T, ramp[::-1]], axis=-1))


def progressive_jpeg(side: int = 6000) -> bytes:
    """A progressive JPEG (libjpeg's 10 scans): libjpeg holds every coefficient of the full picture and decodes each
    scan over it, whatever the reduced size asked for."""
    return encoded(ramp_rgb(side), "JPEG", quality=10, progressive=True)


def repeated_scan_jpeg(side: int, scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until the file has `scans` scans: a crafted file multiplying a
    progressive decode's cost (each repeat is decoded over the whole picture) for a few bytes a scan. Every scan is
    the encoder's own, so the file stays decodable."""
    data = progressive_jpeg(side)
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    have = data.count(b"\xff\xda")
    return data[:end] + data[last_scan:end] * max(0, scans - have) + data[end:]


def flat_webp(side: int = 6000) -> bytes:
    """A lossless flat WebP: a few hundred bytes decoded in full (WebP has no reduced decoding) to RGB."""
    return encoded(Image.new("RGB", (side, side), (90, 120, 150)), "WEBP", lossless=True)


def flat_tiff(side: int = 6000) -> bytes:
    """A deflate-compressed grey TIFF of one frame, `side` pixels square."""
    return encoded(Image.new("L", (side, side), 100), "TIFF", compression="tiff_deflate")


def pixel_json(megabytes: float = 6.0) -> bytes:
    """A /predict/pixels body of about `megabytes` MB: zeros, 784 to an image, as many images as fit."""
    image = "[" + ",".join(["0"] * 784) + "]"
    count = int(megabytes * 1e6) // (len(image) + 1)
    return json.dumps({"images": [json.loads(image)] * count}, separators=(",", ":")).encode()
