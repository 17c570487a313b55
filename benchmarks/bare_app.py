"""The load benchmark's baseline: a bare FastAPI endpoint that accepts the same multipart upload as /predict and
answers a fixed prediction, without decoding the image or running a model."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import FastAPI, File, UploadFile

app = FastAPI(title="bare baseline")

ANSWER = {
    "class_index": 0,
    "class_name": "T-shirt/top",
    "probability": 1.0,
    "top_k": [{"class_index": 0, "class_name": "T-shirt/top", "probability": 1.0}],
    "probabilities": [1.0] + [0.0] * 9,
}


@app.get("/ready")
async def ready() -> dict:
    """Always ready; `pid` names the worker that answered."""
    return {"ready": True, "pid": os.getpid()}


@app.post("/predict")
async def predict(file: Annotated[UploadFile, File()]) -> dict:
    """Read the upload and return a constant answer."""
    await file.read()
    return {**ANSWER, "filename": file.filename}
