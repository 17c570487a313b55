"""Drift signals: the recent traffic against what the served model was trained and judged on."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from ..deps import DriftDep
from ..schemas import ERRORS, DriftReport, DriftSignal

router = APIRouter(tags=["drift"])


@router.get("/drift", responses={503: ERRORS[503]})
async def drift(monitor: DriftDep) -> DriftReport:
    """The drift window's size and count, and each signal (predicted-class divergence from the training prior, unsure
    share, inverted-upload share, input statistics) with its reference, threshold and whether it is past it."""
    summary = monitor.summary()
    return DriftReport(
        run=monitor.run,
        window_size=summary.window_size,
        count=summary.count,
        min_samples=summary.min_samples,
        drifting=summary.drifting,
        signals=[DriftSignal(**asdict(signal)) for signal in summary.signals],
    )
