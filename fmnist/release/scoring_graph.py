"""The whole per-image answer as one graph, and ONNX Runtime to run it: pixels in, calibrated probabilities and the
out-of-distribution score out.

Eager torch spends most of a single image's time on per-operator overhead: the network is small, but normalisation,
about twenty layers, the temperature softmax and the Mahalanobis score are each a Python-level call. `ScoringGraph`
puts all of it in one module built from the same functions the torch path uses (`fmnist.core.model.normalize`,
`FashionCNN.describe`, `fmnist.trust.calibration.softmax`, the abstention policy's score) and is what the torch runtime
runs; `export_onnx` traces it into an ONNX graph with the record's temperature and feature density as constants,
and `OnnxScorer` runs that graph in ONNX Runtime, where batch norm is folded into the convolutions and one call
does the lot.

The thresholds stay outside the graph: the decision is `AbstentionPolicy.decisions`, the same rule the torch path
applies. `tests/release/test_scoring_graph.py` checks that both runtimes answer the same on real test images and photos.

onnx (to export) and onnxruntime (to run) are optional: `runtime_available()` says whether both import, and the
service falls back to torch with a log line when they do not.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from fmnist.core.data import IMAGE_SIZE
from fmnist.core.model import FashionCNN, normalize
from fmnist.release.model_record import ModelRecord
from fmnist.trust.abstention import energy_scores, mahalanobis_terms, power_transform, squared_distances
from fmnist.trust.calibration import softmax

# The graph's ONNX operator set: 17 has every operator the graph uses and runs on any ONNX Runtime of the last years.
OPSET = 17
INPUT = "pixels"
OUTPUTS = ("probabilities", "ood_score", "component_distance")


class RuntimeUnavailable(RuntimeError):
    """ONNX Runtime (or onnx, which the export needs) is not installed, or the graph could not be built."""


def runtime_available() -> str | None:
    """None when the ONNX path can run here; otherwise why not, for the log line of the fall-back."""
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    return f"{' and '.join(missing)} not installed (pip install onnx onnxruntime)" if missing else None


class ScoringGraph(nn.Module):
    """(B, 28, 28) uint8 pixels -> ((B, C) float64 calibrated probabilities, (B,) float64 OOD score, (B,) float64
    distance to the nearest photo component).

    Both runtimes answer with it: eager torch runs it as a module, ONNX Runtime as its export. It is built from the
    record's normalisation, temperature and policy at the time (`matches` says whether they are still the record's).
    The component distance (`AbstentionPolicy.photo_means`; the OOD score again where the policy has none) counts for
    photos only, which is the normaliser's call, and its threshold is the policy's, so both are applied outside the
    graph (`AbstentionPolicy.photo_scores`). Without an abstention policy (records written before abstention existed)
    the OOD score and the distance are zero.
    """

    mu: torch.Tensor
    precision: torch.Tensor
    quad_mu: torch.Tensor
    photo_mu: torch.Tensor
    photo_quad_mu: torch.Tensor

    def __init__(self, record: ModelRecord, network: FashionCNN) -> None:
        super().__init__()
        self.network = network.eval()
        self.mean, self.std, self.temperature = record.mean, record.std, record.temperature
        self.policy = policy = record.abstention
        self.method = policy.ood_score if policy is not None else "none"
        self.power = policy.feature_power if policy is not None else 1.0
        if policy is not None and policy.ood_score == "mahalanobis":
            mu, p, quad_mu = mahalanobis_terms(policy.class_means, policy.precision)
            self.register_buffer("mu", mu)  # (C, D) float64
            self.register_buffer("precision", p)  # (D, D) float64
            self.register_buffer("quad_mu", quad_mu)  # (C,) float64
        self.photo_components = policy is not None and self.method == "mahalanobis" and policy.photo_means is not None
        if self.photo_components:
            assert policy is not None and policy.photo_means is not None
            photo_mu, _, photo_quad_mu = mahalanobis_terms(policy.photo_means, policy.precision)
            self.register_buffer("photo_mu", photo_mu)  # (K, D) float64
            self.register_buffer("photo_quad_mu", photo_quad_mu)  # (K,) float64

    def matches(self, record: ModelRecord) -> bool:
        """Whether the record still has the policy, temperature and normalisation this graph was built with (the
        evaluate step fits the policy after it has built its classifier)."""
        built = (self.mean, self.std, self.temperature)
        return self.policy is record.abstention and built == (record.mean, record.std, record.temperature)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, logits = self.network.describe(normalize(pixels, self.mean, self.std))  # (B, D), (B, C)
        probabilities = softmax(logits, self.temperature)  # (B, C) float64
        if self.method == "mahalanobis":
            transformed = power_transform(features, self.power)  # (B, D)
            ood = squared_distances(transformed, (self.mu, self.precision, self.quad_mu)).min(1).values  # (B,)
            distance = ood
            if self.photo_components:
                terms = (self.photo_mu, self.precision, self.photo_quad_mu)
                distance = squared_distances(transformed, terms).min(1).values  # (B,)
        elif self.method == "energy":
            ood = distance = energy_scores(logits)
        else:  # zeros_like keeps the batch size dynamic in the export (torch.zeros(len(...)) would fix it)
            ood = distance = torch.zeros_like(probabilities[:, 0])
        return probabilities, ood, distance


def export_onnx(graph: ScoringGraph) -> bytes:
    """A CPU `ScoringGraph` as an ONNX model (dynamic batch size)."""
    why = runtime_available()
    if why is not None:
        raise RuntimeUnavailable(why)
    example = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT, *OUTPUTS)}
    with warnings.catch_warnings(), torch.inference_mode():
        # The TorchScript-based exporter is the one that needs no extra packages beyond onnx; torch marks it as
        # superseded by the dynamo exporter, which needs onnxscript and takes far longer for the same graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            cast(Any, buffer),  # the TorchScript exporter writes to a file object as well as to a path
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


class OnnxScorer:
    """A CPU `ScoringGraph` exported and run in an ONNX Runtime session: (B, 28, 28) uint8 -> (probabilities, OOD
    score) as numpy. Raises `RuntimeUnavailable` where onnx or onnxruntime is missing or the export fails."""

    def __init__(self, graph: ScoringGraph, threads: int = 1) -> None:
        self.graph = graph  # what was exported
        try:
            model = export_onnx(graph)
        except RuntimeUnavailable:
            raise
        except Exception as err:  # an exporter failure must not take the service down: torch still works
            raise RuntimeUnavailable(f"ONNX export failed: {type(err).__name__}: {err}") from None
        import onnxruntime as ort  # there: export_onnx checked

        options = ort.SessionOptions()
        # One request's graph is far too small to share among threads; several workers each use their own core.
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, 28, 28) uint8 -> ((B, C) float64 probabilities, (B,) float64 OOD score, (B,) float64 distance to the
        nearest photo component)."""
        probabilities, ood, distance = self.session.run(None, {INPUT: np.ascontiguousarray(pixels, dtype=np.uint8)})
        return probabilities, ood, distance
