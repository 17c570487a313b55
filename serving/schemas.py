"""Request and response bodies of the prediction service, as they appear in the OpenAPI schema at /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


class Health(BaseModel):
    """The process is alive."""

    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    """Whether the model is loaded and warmed up; the 503 form carries the reason in `detail`."""

    ready: bool
    run: str | None = Field(default=None, description="Run pathspec of the model served.")
    pid: int | None = Field(
        default=None, description="Process id of the worker that answered: with several workers, each says for itself."
    )
    following_problem: str | None = Field(
        default=None,
        description="Present only while following the tag has a problem: why the tag's run is not the one served"
        " (a failed or timed-out load) or why the tag could not be looked up. The model named in `run` serves on.",
    )


class Problem(BaseModel):
    """Error body of every 4xx/5xx response: `detail` names the problem."""

    detail: str | list[Any]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Malformed request (e.g. a broken multipart body)."},
    413: {"model": Problem, "description": "Body, image or batch over the configured limit."},
    415: {"model": Problem, "description": "Wrong Content-Type."},
    422: {"model": Problem, "description": "Not an image, truncated image, bad pixel values or shape."},
    503: {"model": Problem, "description": "Model not loaded (yet, or any more)."},
}


class ModelInfo(BaseModel):
    """Which model is served and how it was produced."""

    run: str = Field(description="Metaflow run pathspec, e.g. FashionFlow/1795693605953813.")
    created_at: str
    tags: list[str]
    hparams: dict[str, Any] = Field(description="Hyper-parameters of the selected trial.")
    model_args: dict[str, Any]
    data_fingerprint: str | None = Field(description="SHA-256 identifying the exact Fashion-MNIST files trained on.")
    test_metrics: dict[str, Any] = Field(description="Test-set metrics of this model, measured once by the flow.")
    class_names: list[str]
    temperature: float = Field(description="Softmax temperature fitted on validation data (1.0: uncalibrated).")
    normalization: dict[str, float] = Field(description="Pixel mean and std (of [0, 1]-scaled pixels).")
    abstention: dict[str, Any] | None = Field(
        description="When answers are marked unsure: the confidence threshold for the target selective risk and the"
        " out-of-distribution score's threshold, both fitted on the validation split. null for records made before"
        " thresholds existed: those answer confident only at a calibrated probability of at least 0.9."
    )
    device: str
    runtime: str = Field(description="What runs the model: onnxruntime (the exported graph) or torch.")
    provenance: dict[str, Any]
    loaded_at: str | None = Field(
        None, description="When this model started serving (UTC, ISO 8601): at start-up or at the last switch."
    )
    following: str | None = Field(
        None,
        description="What the service follows for newly tagged models (e.g. \"tag 'production' every 30s\"); null"
        " when it serves one run until restarted.",
    )
    switches: int = Field(0, description="Switches to a newly tagged run since the service started.")
    following_problem: str | None = Field(
        None,
        description="Why the tag's run is not the one served, or why the tag could not be looked up; null when"
        " all is well.",
    )
    drift_reference: dict[str, Any] | None = Field(
        None,
        description="What in-distribution traffic looks like for this model (class prior, unsure share, input"
        " statistics), from its record; the /drift signals compare against it. null for older records.",
    )


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
    confident: bool = Field(
        description="Whether the answer can be relied on, at least for its garment family (`family`): for its class"
        " when `class_confident`; for a photo whose exact class is unsure but whose family is sure (a top, footwear),"
        " for that family. False when the model's calibrated confidence is below the thresholds fitted for at most"
        " the target error rate among confident answers, or when the image looks unlike any training garment"
        " (including an upload with nothing but background)."
    )
    class_confident: bool = Field(
        description="Whether the class itself can be relied on (implies `confident`). Always equal to `confident` for"
        " a scan in Fashion-MNIST's own form; a photo can be confident of its family alone."
    )
    unsure_reason: Literal["low_confidence", "unlike_training_images"] | None = Field(
        None, description="Why the answer is not confident; null when it is."
    )
    family: Literal["tops", "trousers", "dress", "footwear", "bag"] | None = Field(
        None,
        description="The garment family the answer can be relied on for when `confident`: the class's family, or,"
        " for a photo confident of its family alone, that family; null when not confident.",
    )
    inverted: bool | None = Field(
        None,
        description="Uploads (and normalised pixels): whether the garment was darker than its backdrop and was"
        " negated to Fashion-MNIST's light-on-black.",
    )
    filename: str | None = None


class SinglePrediction(Prediction):
    """The answer for one uploaded image, and the run whose model gave it."""

    run: str = Field(description="Run pathspec of the model that produced this answer.")


class BatchPrediction(BaseModel):
    """Predictions for several images, in the order they were sent."""

    run: str = Field(description="Run pathspec of the model that produced these answers.")
    predictions: list[Prediction]


# The image the network received, asked for with `return_input`: lets a user tell a bad crop from a bad model.
# Base64 of a PNG, so the pattern is exact: the prefix, then base64 characters with at most two `=` of padding.
ModelInput = Annotated[
    str,
    Field(
        pattern=r"^data:image/png;base64,[A-Za-z0-9+/]+={0,2}$",
        description="The 28x28 image the network received, after the service's normalisation (light garment on"
        " black, as in Fashion-MNIST), as a PNG data URL (`data:image/png;base64,...`): 8-bit grayscale and"
        " lossless, so it decodes to exactly the pixels the model classified.",
    ),
]


class CropBox(BaseModel):
    """Where in the upload the garment was found: the part the 28x28 image was cut from, as fractions of the
    upload's width and height (after its EXIF orientation), so a client can outline it on the picture."""

    left: float = Field(ge=0.0, le=1.0)
    top: float = Field(ge=0.0, le=1.0)
    right: float = Field(ge=0.0, le=1.0)
    bottom: float = Field(ge=0.0, le=1.0)


# The crop beside `model_input`: null for an upload already in Fashion-MNIST's form (passed through uncropped), one in
# which nothing was found, and raw pixels.
Crop = Annotated[
    CropBox | None,
    Field(description="The part of the upload the model's input was cut from (fractions of its width and height)."),
]


class SinglePredictionWithInput(SinglePrediction):
    """The answer for one uploaded image with the image the model saw (`return_input=true`)."""

    model_input: ModelInput
    crop: Crop = None


class PredictionWithInput(Prediction):
    """The model's answer for one image of a batch, with the image the model saw (`return_input`)."""

    model_input: ModelInput
    crop: Crop = None


class BatchPredictionWithInput(BaseModel):
    """Predictions for several images, in the order they were sent, each with the image the model saw
    (`return_input`)."""

    run: str = Field(description="Run pathspec of the model that produced these answers.")
    predictions: list[PredictionWithInput]


IMAGE_VALUES = 784  # 28 x 28
_PIXEL: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 255}
_FLAT: dict[str, Any] = {"type": "array", "items": _PIXEL, "minItems": 784, "maxItems": 784, "title": "784 values"}
_ROWS: dict[str, Any] = {
    "type": "array",
    "items": {"type": "array", "items": _PIXEL, "minItems": 28, "maxItems": 28},
    "minItems": 28,
    "maxItems": 28,
    "title": "28 rows of 28 values",
}


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: a number with no fractional part (3 and 3.0), never a string or a boolean."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    return value


JsonInteger = Annotated[int, BeforeValidator(_json_integer), Field(strict=False)]


class PixelBatch(BaseModel):
    """Raw images as numbers: each one 28 rows of 28 values or a flat list of 784, 0 (black) to 255 (white).
    By default they are taken as they are, in Fashion-MNIST's convention (light garment on a black background);
    `normalize: true` runs them through the same normalisation as uploads first (backdrop removed, polarity decided,
    trimmed, centred, contrast stretched)."""

    # Strict: `normalize` and `return_input` must be JSON booleans and `top_k` a JSON integer (3 or 3.0), as the
    # schema says; not 0, 1, true or "3", which lax validation would accept.
    model_config = ConfigDict(strict=True, json_schema_extra={"examples": [{"images": [[0] * 784]}]})

    # Typed loosely on purpose: `fmnist.images.uploads.pixels_from_values` checks each image and says what is wrong
    # with it (shape, type, range) in the 422. The schema states exactly what is valid.
    # At most 784 entries per image (28 rows, or 784 values), checked as the body is validated: an image of a
    # million numbers is refused before any of them is converted.
    images: list[Annotated[list[Any], Field(max_length=IMAGE_VALUES)]] = Field(
        min_length=1,
        description="One entry per image: [28][28] or [784] numbers.",
        json_schema_extra={"items": {"oneOf": [_ROWS, _FLAT]}},
    )
    top_k: JsonInteger = Field(default=3, ge=1, le=10, description="How many of the most probable classes to list.")
    normalize: bool = Field(
        default=False, description="Normalise each image as uploads are, instead of taking the values as they are."
    )
    return_input: bool = Field(
        default=False,
        description="Also return each image as the network received it (`model_input`, a PNG data URL): after"
        " `normalize`, or the values sent, rounded to whole grey levels.",
    )


class DriftSignal(BaseModel):
    """One drift signal over the window."""

    name: str
    value: float | None = Field(description="Over the current window; null while it cannot be measured.")
    reference: float | None = Field(description="The same quantity for the training or test data, where known.")
    threshold: float
    past_threshold: bool = Field(description="Past its threshold, on at least `min_samples` predictions.")
    description: str


class DriftReport(BaseModel):
    """Whether recent traffic still looks like the data the served model was trained and judged on."""

    run: str = Field(description="The served model's run; the window restarts when the service switches models.")
    window_size: int = Field(description="Most recent predictions the signals are computed over.")
    count: int = Field(description="Predictions in the window now.")
    min_samples: int = Field(description="No signal counts as past its threshold on fewer predictions.")
    drifting: bool = Field(description="Any signal past its threshold.")
    signals: list[DriftSignal]
