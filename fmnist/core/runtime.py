"""The machine a step runs on: device choice, threads, seeding, mixed precision."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when asked for or when present under "auto"; CPU otherwise. Called once per step (and by the service,
    once at start). Asking for CUDA where torch sees none is an error, not a silent fall-back to the CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested, but torch sees no CUDA device")
    if preference in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(threads: int | None, parallel_tasks: int = 1) -> int:
    """Set torch's intra-op threads: `threads` if given, else the cores shared among tasks running at once.

    Local foreach trials run as parallel processes; each using every core would oversubscribe the machine.
    """
    n = threads or max(1, available_cores() // max(1, parallel_tasks))
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 would be emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap way to tell, so assume not
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA devices and CPUs that compute in it natively (or when forced), None for fp32.

    `benchmarks/frontier.py` times trials in both precisions side by side (docs/benchmarks.md).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and native_cpu_bf16():
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Mixed precision for the forward pass when `dtype` is set; a no-op otherwise."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def describe_device(device: torch.device) -> str:
    """A human-readable name for the device, e.g. 'cuda (NVIDIA H100 80GB HBM3)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
