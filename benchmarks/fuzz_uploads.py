"""Coverage-guided fuzzing of the upload path: any bytes through the service's own decode and normalisation.

    python benchmarks/fuzz_uploads.py --minutes 2                 # two minutes of fuzzing
    python benchmarks/fuzz_uploads.py --quick --json out.json     # ~20 s (the test suite's run)
    python benchmarks/fuzz_uploads.py --minutes 30 --corpus fuzz/corpus --findings fuzz/findings   # keep both

The target is what `serving.routes.predict` does with an upload's bytes: `uploads.open_upload(data, max_image_pixels,
WORK_SIZE)`, then `normalise.prepare_opened` (decode at reduced size, then the normalisation to 28x28), at the
service's default settings (`serving.settings.Settings`). An `ImageError` with a message is the service's 413/422,
so it is fine; anything else is a finding:
  exception  any other exception (the service's 500), an `ImageError` without a message, or a model input that is
             not (28, 28) uint8; atheris prints the traceback, libFuzzer writes the input (crash-<sha1>)
  timeout    one input ran past TIME_BOUND_S (libFuzzer's -timeout; timeout-<sha1>)
  slow       one input took TIME_BOUND_S or longer but finished before -timeout caught it (libFuzzer checks the time
             every TIME_BOUND_S / 2 + 1 seconds, so an input of 1 to 1.6 times the bound may escape it):
             -report_slow_units catches those (slow-unit-<sha1>), and fuzzing goes on
  oom        the process's peak memory passed the memory bound (libFuzzer's -rss_limit_mb; oom-<sha1>)
libFuzzer (atheris) runs in a child process, as `atheris.Fuzz` never returns; after a finding the child stops and
is started again on the grown corpus for the time that is left (the input that stopped it taken out of the seed and
corpus folders, its copy kept in the findings folder), so one run can report several findings.

The fuzzer is seeded with real files: Fashion-MNIST training images (the train split only; the test split is
sealed) and phone photographs of the real-photo set's `fit` split, each saved as PNG, JPEG (baseline and
progressive), WebP, GIF, BMP and TIFF in the modes users send (1, L, LA, P with and without transparency, RGB, RGBA,
CMYK, 16-bit, 32-bit float), at a few sizes, plus multi-frame GIF, TIFF and WebP, a JPEG with an EXIF rotation and
the photographs' own JPEG bytes; a dictionary of the formats' markers helps the mutator build headers.

What it prints: executions, executions per second (over the time libFuzzer ran, the seeds' own runs included, the
child's set-up not), coverage (libFuzzer's `cov:`, the instrumented Python edges of Pillow and fmnist.images
reached, and `ft:`, its finer features), the corpus (units libFuzzer kept, and files in the corpus folder), the peak
memory, and each finding (kind, the file holding the input, the first line of the exception or of libFuzzer's
report). Exit code 0 without a finding, 1 with one.

Bounds, and why:
  time     TIME_BOUND_S per input: the service's `decode_seconds` (10 s), the longest it lets one decode run
           before answering 422. The target runs without the service's own `time_limit`, so every input that the
           service would have to cut off (its decoding thread held until the decoder's next check) is a finding.
           The pixel limit is what bounds a legitimate decode: a 40-megapixel RGBA PNG takes 0.7 s through this
           path on the 2-core development machine (`benchmarks/serve_decode.py` prints such cases).
  memory   the child's resident memory once set up (about 80 MB) plus MEMORY_MARGIN (1.5) x DECODE_BYTES_PER_PIXEL
           (8) x `max_image_pixels`: 8 bytes a pixel is the peak of one decode that `serving/decoding.py` plans the
           service's memory with (an RGBA image and its premultiplied copy), the margin is for the normalisation's
           arrays and allocator slack; about 540 MB in all. A palette PNG with transparency at the pixel limit
           measures 9 bytes a pixel (its indices, their RGBA conversion and the premultiplied copy): within the
           margin. More than the bound is a decode that costs more than the pixel limit promises.
  length   MAX_INPUT_BYTES (64 KiB) per input: enough for every seed and for a PNG claiming the whole pixel limit
           (a 40-megapixel grey PNG compresses to 53 kB); the service accepts 10 MB, but longer inputs only slow
           every mutation down, and the decoders read any length in the same fixed-size chunks.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Nothing here imports Pillow or fmnist.images at module level: the child imports them under atheris' instrumentation.
from serving.settings import Settings  # noqa: E402

MAX_IMAGE_PIXELS: int = Settings.model_fields["max_image_pixels"].default
TIME_BOUND_S = math.ceil(Settings.model_fields["decode_seconds"].default)  # libFuzzer's -timeout takes seconds
DECODE_BYTES_PER_PIXEL = 8
MEMORY_MARGIN = 1.5
MAX_INPUT_BYTES = 64 * 1024
QUICK_SECONDS = 14  # of fuzzing; with the seeds and the child's set-up, about 20 s in all
# A child is started again after a finding while at least this much time is left, at most MAX_RUNS times in all.
MIN_RUN_SECONDS = 5
MAX_RUNS = 12
# A child still running this long after its -max_total_time is killed: a hang that even libFuzzer's -timeout did not
# catch (a decoder that blocks its signal, say).
SETUP_GRACE_SECONDS = 120
# Tokens of the allowed formats' headers and chunks, for libFuzzer's -dict: mutations insert them whole.
DICTIONARY = (
    b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"eXIf", b"iCCP", b"acTL", b"fcTL", b"fdAT",
    b"\xff\xd8", b"\xff\xd9", b"\xff\xc0", b"\xff\xc2", b"\xff\xc4", b"\xff\xda", b"\xff\xdb", b"\xff\xdd",
    b"\xff\xe0", b"\xff\xe1", b"\xff\xee", b"JFIF\x00", b"Exif\x00\x00", b"Adobe",
    b"RIFF", b"WEBP", b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF",
    b"GIF87a", b"GIF89a", b"NETSCAPE2.0", b"\x21\xf9\x04", b"\x2c",
    b"BM", b"\x28\x00\x00\x00", b"\x7c\x00\x00\x00",
    b"II*\x00", b"MM\x00*", b"II+\x00", b"\x01\x01", b"\x11\x01", b"\x17\x01", b"\x03\x01", b"\x06\x01",
)  # fmt: skip


@dataclass
class Finding:
    """One input the upload path mishandled."""

    kind: str  # exception, timeout, slow, oom, crash (a native crash) or hang (the child stopped answering)
    path: str | None  # the input as libFuzzer wrote it
    first_line: str  # the exception's first line, or libFuzzer's report
    traceback: str = ""


@dataclass
class ChildRun:
    """What one libFuzzer child printed, parsed."""

    executions: int = 0
    cov: int = 0
    ft: int = 0
    corpus_units: int = 0
    inited_cov: int = 0
    peak_rss_mb: int = 0
    slowest_unit_s: int = 0
    seconds: float = 0.0  # from libFuzzer's start (its seed line) to the child's exit: the seeds' runs and fuzzing
    rss_limit_mb: int = 0
    findings: list[Finding] = field(default_factory=list)
    returncode: int | None = None


STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+(?:cov: (\d+) ft: (\d+) )?(?:corp: (\d+)/)?")
ERROR = re.compile(r"==\d+== ERROR: libFuzzer: (.+)")
WRITTEN = re.compile(r"Test unit written to (\S+)")
STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
RSS_BOUND = re.compile(r"^bounds: rss_limit_mb=(\d+)")


def parse_output(lines: list[str], run: ChildRun) -> None:
    """Fill `run` from the child's output: libFuzzer's status lines, final stats and report of a finding (a child
    stops at its first, but not at a slow one), atheris' Python traceback or stack of an input past -timeout, and the
    child's own `bounds:` line."""
    reported: str | None = None  # libFuzzer's `ERROR:` line
    written: str | None = None  # where it wrote the input
    block: list[str] | None = None  # the traceback being read
    traceback: list[str] = []
    slowest = "Slowest unit"
    for line in lines:
        if "=== Uncaught Python exception: ===" in line or "=== Timeout:" in line:
            block = traceback = [] if "exception" in line else [line.strip(" =")]
            continue
        error, unit = ERROR.search(line), WRITTEN.search(line)
        if unit and Path(unit.group(1)).name.startswith("slow-unit-"):  # libFuzzer goes on after a slow input
            run.findings.append(Finding("slow", unit.group(1), f"{slowest} (the bound is {TIME_BOUND_S}s)"))
            continue
        if line.startswith("Slowest unit:"):
            slowest = line.strip().rstrip(":")
            continue
        if error or unit or line.startswith(("ALARM:", "SUMMARY:", "MS:")):
            block = None  # libFuzzer's own report follows atheris' (in an order that depends on the finding)
        if error:
            reported = error.group(1).strip()
        if unit:
            written = unit.group(1)
        if block is not None:
            block.append(line)
            continue
        _parse_figures(line, run)
    if reported or written:
        run.findings.append(_finding(reported, written, "\n".join(traceback).strip()))


def _parse_figures(line: str, run: ChildRun) -> None:
    """One line of libFuzzer's figures (a status line, a final stat) or the child's `bounds:` line into `run`."""
    bound = RSS_BOUND.match(line)
    if bound:
        run.rss_limit_mb = int(bound.group(1))
    stat = STAT.match(line)
    if stat:
        name, value = stat.group(1), int(stat.group(2))
        if name == "number_of_executed_units":
            run.executions = value
        elif name == "peak_rss_mb":
            run.peak_rss_mb = value
        elif name == "slowest_unit_time_sec":
            run.slowest_unit_s = value
        return
    status = STATUS.match(line)
    if status:
        run.executions = max(run.executions, int(status.group(1)))
        if status.group(3):
            run.cov, run.ft = int(status.group(3)), int(status.group(4))
            if status.group(2) == "INITED":
                run.inited_cov = run.cov
        if status.group(5):
            run.corpus_units = int(status.group(5))


def _finding(reported: str | None, path: str | None, traceback: str) -> Finding:
    """A finding from libFuzzer's report, the input's file name (crash-, timeout- or oom-<sha1>) and atheris'
    traceback (the target raised) or stack (the input was slow)."""
    prefix = Path(path).name.split("-", 1)[0] if path else ""
    report = reported or "no report"
    if prefix == "timeout" or report.startswith("timeout"):
        return Finding("timeout", path, report, traceback)
    if prefix == "oom" or report.startswith("out-of-memory"):
        return Finding("oom", path, report, traceback)
    if traceback:  # atheris printed the target's exception
        return Finding("exception", path, traceback.splitlines()[0].strip(), traceback)
    return Finding("crash", path, report)  # a native crash: a signal in a decoder


# --- the child: atheris and libFuzzer ----------------------------------------------------------------------------


def run_child(libfuzzer_args: list[str]) -> int:
    """Import the upload path under atheris' instrumentation, bound the memory, and fuzz; never returns (libFuzzer
    exits the process)."""
    import warnings

    import atheris
    import numpy as np
    import scipy.ndimage  # noqa: F401 - numpy and scipy are imported uninstrumented: not what is fuzzed

    import fmnist.core.data  # noqa: F401 - likewise

    with atheris.instrument_imports(include=["PIL", "fmnist.images"]):
        from PIL import Image, ImageOps, TiffImagePlugin  # noqa: F401 - Pillow's lazily imported modules, here

        from fmnist.images.normalise import WORK_SIZE, prepare_opened
        from fmnist.images.uploads import ImageError, open_upload

        Image.init()  # every format's opener, imported (and so instrumented) now rather than on the first input

    # Pillow warns about odd but readable files (corrupt EXIF, unknown TIFF tags); the service ignores those too.
    # The decompression-bomb warning is still raised as an error inside `uploads._decoding_errors`.
    warnings.simplefilter("ignore")

    def test_one_input(data: bytes) -> None:
        try:
            prepared = prepare_opened(open_upload(data, MAX_IMAGE_PIXELS, WORK_SIZE))
        except ImageError as err:
            if not str(err).strip():
                raise AssertionError(f"{type(err).__name__} without a message") from err
            return
        pixels = prepared.pixels
        if pixels.shape != (28, 28) or pixels.dtype != np.uint8:
            raise AssertionError(f"model input of shape {pixels.shape} and type {pixels.dtype}, not (28, 28) uint8")

    rss_mb = _status_kib("VmRSS") / 1024
    rss_limit = math.ceil(rss_mb + MEMORY_MARGIN * DECODE_BYTES_PER_PIXEL * MAX_IMAGE_PIXELS / 2**20)
    print(
        f"bounds: rss_limit_mb={rss_limit} (set up at {rss_mb:.0f} MB) timeout_s={TIME_BOUND_S}"
        f" max_image_pixels={MAX_IMAGE_PIXELS} work_size={WORK_SIZE}",
        flush=True,
    )
    atheris.Setup([sys.argv[0], *libfuzzer_args, f"-rss_limit_mb={rss_limit}"], test_one_input)
    atheris.Fuzz()
    return 0  # not reached


def _status_kib(name: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


# --- the seeds: real images in every allowed format ----------------------------------------------------------------


def seed_images(quick: bool) -> dict[str, tuple[Image.Image, bytes | None]]:
    """Name -> a real picture and, for a photograph, its file: Fashion-MNIST training images (28x28 grey) and phone
    photographs of the real-photo set's fit split (256 px JPEGs)."""
    from PIL import Image

    from fmnist.core.data import load_dataset
    from fmnist.core.real_photos import load_real_photos, sample_per_folder

    data = load_dataset(download=False)
    classes = (0, 8) if quick else (0, 3, 5, 8, 9)  # T-shirt/top, Dress, Sandal, Bag, Ankle boot
    images: dict[str, tuple[Image.Image, bytes | None]] = {}
    for label in classes:
        index = int((data.train_labels == label).argmax())  # the first training image of the class
        images[f"fmnist-train{index}"] = (Image.fromarray(data.train_images[index]), None)
    for photo in sample_per_folder(load_real_photos("fit"), 1)[: 1 if quick else 3]:
        image = Image.open(io.BytesIO(photo.data))
        image.load()
        images[f"photo-{photo.folder}"] = (image, photo.data)
    return images


# (name, Pillow format, mode, save options): every allowed format in the modes users send.
VARIANTS: tuple[tuple[str, str, str, dict], ...] = (
    ("png-L", "PNG", "L", {}),
    ("png-LA", "PNG", "LA", {}),
    ("png-RGB", "PNG", "RGB", {}),
    ("png-RGBA", "PNG", "RGBA", {}),
    ("png-P", "PNG", "P", {}),
    ("png-P-trns", "PNG", "P", {"transparency": 0}),
    ("png-16bit", "PNG", "I;16", {}),
    ("png-1", "PNG", "1", {}),
    ("jpeg-L", "JPEG", "L", {"quality": 85}),
    ("jpeg-RGB", "JPEG", "RGB", {"quality": 85}),
    ("jpeg-progressive-L", "JPEG", "L", {"quality": 85, "progressive": True}),
    ("jpeg-progressive-RGB", "JPEG", "RGB", {"quality": 85, "progressive": True}),
    ("jpeg-CMYK", "JPEG", "CMYK", {"quality": 85}),
    ("webp-RGB", "WEBP", "RGB", {"quality": 80}),
    ("webp-RGBA-lossless", "WEBP", "RGBA", {"lossless": True}),
    ("gif-P", "GIF", "P", {}),
    ("gif-L", "GIF", "L", {}),
    ("bmp-1", "BMP", "1", {}),
    ("bmp-L", "BMP", "L", {}),
    ("bmp-P", "BMP", "P", {}),
    ("bmp-RGB", "BMP", "RGB", {}),
    ("bmp-RGBA", "BMP", "RGBA", {}),
    ("tiff-1-group4", "TIFF", "1", {"compression": "group4"}),
    ("tiff-L-deflate", "TIFF", "L", {"compression": "tiff_deflate"}),
    ("tiff-P-packbits", "TIFF", "P", {"compression": "packbits"}),
    ("tiff-RGB-lzw", "TIFF", "RGB", {"compression": "tiff_lzw"}),
    ("tiff-RGBA", "TIFF", "RGBA", {}),
    ("tiff-CMYK", "TIFF", "CMYK", {}),
    ("tiff-16bit", "TIFF", "I;16", {}),
    ("tiff-float", "TIFF", "F", {}),
)
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


def seed_uploads(quick: bool) -> dict[str, bytes]:
    """File name -> bytes: each seed picture at two sizes in every variant, multi-frame files, an EXIF-rotated JPEG
    and the photographs' own files; only those within MAX_INPUT_BYTES."""
    from PIL import Image

    seeds: dict[str, bytes] = {}
    for name, (image, original) in seed_images(quick).items():
        if original is not None:
            sizes = [_fit(image.size, 64), _fit(image.size, 128)]
            seeds[f"{name}-original.jpg"] = original
        else:
            sizes = [(28, 28), (56, 56)]
        for width, height in sizes:
            resized = image.resize((width, height), Image.Resampling.LANCZOS)
            for variant, fmt, mode, options in VARIANTS:
                seeds[f"{name}-{width}x{height}-{variant}.{EXTENSIONS[fmt]}"] = _encode(
                    _in_mode(resized, mode), fmt, **options
                )
        small = image.resize(sizes[0], Image.Resampling.LANCZOS).convert("RGB")
        frames = [small, small.rotate(90), small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
        for fmt in ("GIF", "TIFF", "WEBP"):
            seeds[f"{name}-frames.{EXTENSIONS[fmt]}"] = _encode(frames[0], fmt, save_all=True, append_images=frames[1:])
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        seeds[f"{name}-exif-rotated.jpg"] = _encode(small, "JPEG", exif=exif.tobytes())
    return {name: data for name, data in seeds.items() if len(data) <= MAX_INPUT_BYTES}


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    """`size` scaled so its long side is `side`."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    """A picture converted to `mode`; 16-bit and float from its 8-bit grey levels (x257: the full 16-bit range)."""
    import numpy as np
    from PIL import Image

    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    if mode == "F":
        return Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32) / 255)
    if mode in ("P", "1", "L", "LA", "RGB", "RGBA", "CMYK"):
        if mode in ("LA", "RGBA"):  # a garment on a transparent backdrop: alpha from the grey levels
            base = image.convert("RGB" if mode == "RGBA" else "L")
            base.putalpha(image.convert("L").point(lambda v: 255 if v > 16 else 0))
            return base
        return image.convert("RGB").convert(mode) if mode == "P" else image.convert(mode)
    raise ValueError(mode)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_dictionary(path: Path) -> None:
    """DICTIONARY in libFuzzer's -dict format: one quoted token a line, bytes as \\xNN."""
    lines = ['"' + "".join(f"\\x{b:02x}" for b in token) + '"' for token in DICTIONARY]
    path.write_text("\n".join(lines) + "\n")


# --- the parent: seeds, children, the report ---------------------------------------------------------------------


@dataclass
class Report:
    """The campaign's figures, as printed and written to --json."""

    seconds: float
    executions: int
    exec_per_s: float
    cov: int
    ft: int
    cov_after_seeds: int
    corpus_units: int
    corpus_files: int
    seeds: int
    seed_formats: dict[str, int]
    peak_rss_mb: int
    slowest_unit_s: int
    runs: int
    bounds: dict[str, int]
    findings: list[Finding]


def fuzz(
    seconds: float,
    corpus: Path,
    findings_dir: Path,
    seed_dir: Path,
    dictionary: Path,
    echo: Callable[[str], None] | None = None,
) -> tuple[list[ChildRun], list[Finding]]:
    """libFuzzer children for `seconds` in all, each started again after a finding on the grown corpus."""
    runs: list[ChildRun] = []
    findings: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    start = time.monotonic()
    while len(runs) < MAX_RUNS:
        left = seconds - (time.monotonic() - start)
        if left < MIN_RUN_SECONDS and runs:
            break
        run = _run_child(max(1, int(left)), corpus, findings_dir, seed_dir, dictionary, echo)
        runs.append(run)
        for finding in run.findings:
            if (finding.kind, finding.first_line) not in seen:  # the same bug found again after a restart
                seen.add((finding.kind, finding.first_line))
                findings.append(finding)
        stopped_by = [f for f in run.findings if f.kind != "slow"]  # libFuzzer goes on after a slow input only
        if not stopped_by:
            break  # the child used up its time
        # libFuzzer stops at a seed or corpus input that fails as it stopped at a mutant: out of the way with it, or
        # every restart would stop there again.
        _remove_inputs({Path(f.path).read_bytes() for f in stopped_by if f.path}, (corpus, seed_dir))
    return runs, findings


def _remove_inputs(contents: set[bytes], folders: tuple[Path, ...]) -> None:
    """Delete the files in `folders` whose bytes are one of `contents`."""
    for folder in folders:
        for path in folder.iterdir():
            if path.is_file() and path.read_bytes() in contents:
                path.unlink()


def _run_child(
    seconds: int,
    corpus: Path,
    findings_dir: Path,
    seed_dir: Path,
    dictionary: Path,
    echo: Callable[[str], None] | None,
) -> ChildRun:
    """One libFuzzer child for at most `seconds`: its output parsed, its log kept beside any finding."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        f"-max_total_time={seconds}",
        f"-timeout={TIME_BOUND_S}",
        f"-report_slow_units={TIME_BOUND_S}",
        f"-max_len={MAX_INPUT_BYTES}",
        "-print_final_stats=1",
        f"-artifact_prefix={findings_dir}/",
        f"-dict={dictionary}",
        str(corpus),  # the first folder: where libFuzzer adds the inputs that reach new coverage
        str(seed_dir),
    ]
    run = ChildRun()
    lines: list[str] = []
    started = time.monotonic()
    fuzzing_since: float | None = None  # set up (imports, instrumentation) until libFuzzer prints its seed
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    killed = threading.Event()

    def kill() -> None:  # on the watchdog's thread: a silent child is killed too
        killed.set()
        process.kill()

    watchdog = threading.Timer(seconds + SETUP_GRACE_SECONDS, kill)
    watchdog.start()
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if fuzzing_since is None and line.startswith("INFO: Seed:"):
                fuzzing_since = time.monotonic()
            if echo:
                echo(lines[-1])
        run.returncode = process.wait()
    finally:
        watchdog.cancel()
        if process.poll() is None:  # interrupted
            process.kill()
            process.wait()
    if killed.is_set():
        run.findings.append(Finding("hang", None, f"still running {SETUP_GRACE_SECONDS}s past its {seconds}s: killed"))
    run.seconds = time.monotonic() - (fuzzing_since or started)
    parse_output(lines, run)
    if run.returncode not in (0, None) and not run.findings and run.executions == 0:
        raise RuntimeError("the fuzzing child failed before fuzzing:\n" + "\n".join(lines[-40:]))
    if run.findings:
        log = findings_dir / f"libfuzzer-{time.strftime('%Y%m%d-%H%M%S')}-{process.pid}.log"
        log.write_text("\n".join(lines) + "\n")
    return run


def summarise(runs: list[ChildRun], findings: list[Finding], seeds: dict[str, bytes], corpus: Path) -> Report:
    """The campaign's figures over all its children."""
    executions = sum(r.executions for r in runs)
    seconds = sum(r.seconds for r in runs)
    formats: dict[str, int] = {}
    for name in seeds:
        extension = name.rsplit(".", 1)[-1]
        formats[extension] = formats.get(extension, 0) + 1
    last = runs[-1]
    return Report(
        seconds=round(seconds, 1),
        executions=executions,
        exec_per_s=round(executions / seconds, 1) if seconds else 0.0,
        cov=max(r.cov for r in runs),
        ft=max(r.ft for r in runs),
        cov_after_seeds=next((r.inited_cov for r in runs if r.inited_cov), 0),
        corpus_units=last.corpus_units,
        corpus_files=sum(1 for p in corpus.iterdir() if p.is_file()),
        seeds=len(seeds),
        seed_formats=formats,
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
        slowest_unit_s=max(r.slowest_unit_s for r in runs),
        runs=len(runs),
        bounds={
            "timeout_s": TIME_BOUND_S,
            "rss_limit_mb": last.rss_limit_mb,
            "max_len_bytes": MAX_INPUT_BYTES,
            "max_image_pixels": MAX_IMAGE_PIXELS,
        },
        findings=findings,
    )


def print_report(report: Report) -> None:
    print(f"fuzzed {report.seconds:.0f}s in {report.runs} libFuzzer run(s), {report.seeds} seeds {report.seed_formats}")
    print(
        f"bounds: {report.bounds['timeout_s']}s per input, {report.bounds['rss_limit_mb']} MB resident,"
        f" {report.bounds['max_len_bytes']} bytes per input, {report.bounds['max_image_pixels']:,} pixels"
    )
    print(f"executions:   {report.executions}")
    print(f"executions/s: {report.exec_per_s:.1f}")
    print(f"coverage:     cov {report.cov} ft {report.ft} (cov {report.cov_after_seeds} after the seeds alone)")
    print(f"corpus:       {report.corpus_units} units kept ({report.corpus_files} files in the corpus folder)")
    print(f"peak memory:  {report.peak_rss_mb} MB; slowest input {report.slowest_unit_s}s")
    print(f"findings:     {len(report.findings)}")
    for finding in report.findings:
        print(f"  {finding.kind:9s} {finding.path or '(no input written)'}: {finding.first_line}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return run_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="time to fuzz (the seeds' set-up not counted)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS}s of fuzzing, fewer seed pictures")
    parser.add_argument("--corpus", type=Path, help="folder of the grown corpus, kept (default: a temporary one)")
    parser.add_argument("--findings", type=Path, help="folder for crashing inputs (default: a temporary one, kept)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--verbose", action="store_true", help="echo libFuzzer's output")
    args = parser.parse_args(argv)
    seconds = QUICK_SECONDS if args.quick else args.minutes * 60

    with tempfile.TemporaryDirectory(prefix="fuzz-uploads-") as scratch:
        seed_dir = Path(scratch) / "seeds"
        seed_dir.mkdir()
        seeds = seed_uploads(args.quick)
        for name, data in seeds.items():
            (seed_dir / name).write_bytes(data)
        dictionary = Path(scratch) / "formats.dict"  # beside the seeds: every file in a corpus folder is an input
        write_dictionary(dictionary)
        corpus = args.corpus or Path(scratch) / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        findings_dir = (args.findings or Path(tempfile.mkdtemp(prefix="fuzz-uploads-findings-"))).resolve()
        findings_dir.mkdir(parents=True, exist_ok=True)
        echo = (lambda line: print(line, file=sys.stderr)) if args.verbose else None
        runs, findings = fuzz(seconds, corpus.resolve(), findings_dir, seed_dir, dictionary, echo)
        report = summarise(runs, findings, seeds, corpus)
    if not findings and args.findings is None:
        shutil.rmtree(findings_dir, ignore_errors=True)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
