"""Request and response bodies of the prediction service, as they appear in the OpenAPI schema at /docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Health(BaseModel):
    """The process is alive."""

    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    """Whether the model is loaded and warmed up; the 503 form carries the reason in `detail`."""

    ready: bool
    run: str | None = Field(default=None, description="Run pathspec of the model served.")


class Problem(BaseModel):
    """Error body of every 4xx/5xx response: `detail` names the problem."""

    detail: str | list[Any]


class ModelInfo(BaseModel):
    """Which model is served and how it was produced."""

    run: str = Field(description="Metaflow run pathspec, e.g. FashionFlow/1795693605953813.")
    created_at: str
    tags: list[str]
    hparams: dict[str, Any] = Field(description="Hyper-parameters of the selected training split.")
    model_args: dict[str, Any]
    data_fingerprint: str | None = Field(description="SHA-256 identifying the exact Fashion-MNIST files trained on.")
    test_metrics: dict[str, Any] = Field(description="Test-set metrics of this model, measured once by the flow.")
    class_names: list[str]
    temperature: float = Field(description="Softmax temperature fitted on validation data (1.0: uncalibrated).")
    normalization: dict[str, float] = Field(description="Pixel mean and std (of [0, 1]-scaled pixels).")
    device: str
    provenance: dict[str, Any]


class ClassProbability(BaseModel):
    """One class and its calibrated probability."""

    class_index: int = Field(ge=0)
    class_name: str
    probability: float = Field(ge=0.0, le=1.0)


class Prediction(BaseModel):
    """The model's answer for one image."""

    class_index: int = Field(ge=0, description="Most probable class.")
    class_name: str
    probability: float = Field(ge=0.0, le=1.0, description="Calibrated probability of that class.")
    top_k: list[ClassProbability] = Field(description="The k most probable classes, most probable first.")
    probabilities: list[float] = Field(
        description="Calibrated probabilities of every class, in class-index order: softmax(logits / temperature)."
    )
    inverted: bool | None = Field(
        None, description="Uploads only: whether the image was inverted because its background is light."
    )
    filename: str | None = None


class BatchPrediction(BaseModel):
    """Predictions for several images, in the order they were sent."""

    run: str
    predictions: list[Prediction]


class PixelBatch(BaseModel):
    """Raw images as numbers: each one 28 rows of 28 values or a flat list of 784, 0 (black) to 255 (white),
    light garment on dark background as in Fashion-MNIST. No inversion or resizing is applied."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"images": [[0] * 784]}]},
    )

    images: list[list[Any]] = Field(min_length=1, description="One entry per image: [28][28] or [784] numbers.")
    top_k: int = Field(default=3, ge=1, le=10, description="How many of the most probable classes to list.")
