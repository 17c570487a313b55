"""What one upload costs to decode and normalise: time and peak memory, full-size decoding against the service's
reduced-size decoding, for ordinary uploads and for small files that claim huge images.

    python benchmarks/serve_decode.py            # every case, 3 timed rounds each
    python benchmarks/serve_decode.py --quick    # 1 round, the smaller hostile cases only (the test suite's run)

Each case runs in a fresh process (spawned); its peak resident memory (VmHWM, reset before the decode) above its
resident memory before the decode is the memory that one decode needed. Two paths:
  full     `uploads.decode_image` + `uploads.grayscale_array` + `imaging.normalize_photo`: the image decoded and
           converted at its claimed size, then shrunk by the normalisation
  reduced  `imaging.prepare_upload`, the service's path: decoded at reduced size where the format allows (JPEG
           draft), shrunk by an integer factor at once otherwise, high bit-depth in strips
The last table lines are the pixel-limit cases (`--limit`, default the service's 40 megapixels): what the largest
upload the limit lets through costs, the figure behind the default of `max_image_pixels`.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fmnist.images.normalise import normalize_photo, prepare_upload  # noqa: E402
from fmnist.images.uploads import decode_image, grayscale_array  # noqa: E402
from serving.settings import Settings  # noqa: E402

LIMIT = Settings.model_fields["max_image_pixels"].default


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def garment_photo(side: int) -> Image.Image:
    """A dark shape on light grey, `side` pixels square: a stand-in product photo that compresses as photos do."""
    image = Image.new("L", (side, side), 200)
    image.paste(40, (side // 4, side // 6, 3 * side // 4, 5 * side // 6))
    return image


def cases(quick: bool, limit: int) -> dict[str, Callable[[], bytes]]:
    """Name -> a function making the upload's bytes."""
    side = int(limit**0.5)
    small = {
        "28x28 PNG": lambda: encode(garment_photo(28), "PNG"),
        "224 px JPEG photo": lambda: encode(garment_photo(224).convert("RGB"), "JPEG", quality=90),
        "3000 px JPEG photo": lambda: encode(garment_photo(3000).convert("RGB"), "JPEG", quality=90),
        "2000x2000 grey PNG": lambda: encode(Image.new("L", (2000, 2000), 128), "PNG"),
    }
    if quick:
        return small
    return {
        **small,
        "6000x6000 grey PNG": lambda: encode(Image.new("L", (6000, 6000), 128), "PNG"),
        "6000x6000 RGBA PNG": lambda: encode(Image.new("RGBA", (6000, 6000), (90, 90, 90, 200)), "PNG"),
        "6000x6000 GIF, 8 frames": lambda: many_frames("GIF", 6000, 8),
        "6320x6320 16-bit PNG": lambda: encode(Image.new("I;16", (6320, 6320), 3000), "PNG"),
        f"{side}x{side} grey PNG (limit)": lambda: encode(Image.new("L", (side, side), 128), "PNG"),
        f"{side}x{side} RGBA PNG (limit)": lambda: encode(Image.new("RGBA", (side, side), (9, 9, 9, 99)), "PNG"),
        f"{side}x{side} 16-bit PNG (limit)": lambda: encode(Image.new("I;16", (side, side), 9), "PNG"),
        f"{side}x{side} JPEG (limit)": lambda: encode(Image.new("RGB", (side, side), "grey"), "JPEG"),
    }


def many_frames(fmt: str, side: int, count: int) -> bytes:
    frames = [Image.new("P", (side, side), i) for i in range(count)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


def full(data: bytes) -> object:
    return normalize_photo(grayscale_array(decode_image(data, LIMIT)))


def reduced(data: bytes) -> object:
    return prepare_upload(data, LIMIT)


def measure(data: bytes, path: str, rounds: int) -> tuple[float, float]:
    """In a fresh process: (median ms, peak MB above the baseline) of one path on one upload."""
    run = full if path == "full" else reduced
    run(encode(garment_photo(64), "PNG"))  # first-call costs (lazy imports, caches) are not the upload's
    _reset_peak()
    baseline = _status_kib("VmRSS")
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run(data)
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM") - baseline
    return float(np.median(times)) * 1000, peak / 1024


def _reset_peak() -> None:
    """Reset the process's peak resident memory (Linux: "5" to /proc/self/clear_refs), so the imports' own peak
    does not hide the decode's."""
    Path("/proc/self/clear_refs").write_text("5")


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (VmRSS now, VmHWM its peak since the reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, small cases only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=LIMIT, help="pixel limit whose largest upload is measured")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    context = multiprocessing.get_context("spawn")
    print(f"pixel limit {args.limit:,}; median of {rounds} round(s); peak = peak RSS above the RSS before the decode")
    print(f"{'case':34s} {'bytes':>9s} {'full ms':>9s} {'full MB':>8s} {'reduced ms':>11s} {'reduced MB':>11s}")
    for name, make in cases(args.quick, args.limit).items():
        data = make()  # here, so the child's peak is its decoding alone
        row = []
        for path in ("full", "reduced"):
            with context.Pool(1) as pool:
                row.append(pool.apply(measure, (data, path, rounds)))
        (full_ms, full_mb), (reduced_ms, reduced_mb) = row
        print(f"{name:34s} {len(data):9d} {full_ms:9.1f} {full_mb:8.0f} {reduced_ms:11.1f} {reduced_mb:11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
