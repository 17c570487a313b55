"""The exported graph in ONNX Runtime answers as eager torch does, on real test images and rendered photos, and the
service falls back to torch, saying so, where ONNX Runtime is absent."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from fmnist.evaluation.photos import PHOTO_CONDITIONS, photo_rng, render_photo
from fmnist.images.normalise import normalize_photo
from fmnist.images.uploads import decode_image, grayscale_array
from fmnist.release.classifier import Classifier
from fmnist.release.model_record import ModelRecord
from fmnist.release.scoring_graph import RuntimeUnavailable, ScoringGraph, runtime_available
from serving.model_loading import ModelLoadError, load_model
from serving.settings import Settings
from tests.support.images import real_test_images

pytestmark = pytest.mark.skipif(runtime_available() is not None, reason=str(runtime_available()))

# Probabilities of the two runtimes may differ by float32 rounding inside the network (different kernels, batch norm
# folded into the convolutions); measured at a few 1e-6. The stated tolerance leaves an order of magnitude.
PROBABILITY_TOLERANCE = 2e-5


@pytest.fixture(scope="module")
def record(smoke_run) -> ModelRecord:
    return ModelRecord.from_bytes(smoke_run.data.calibrated_model)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """1,000 real test images and one rendered photo per condition and severity, as the model sees them."""
    images, _ = real_test_images(1000)
    photos = [
        normalize_photo(grayscale_array(decode_image(render_photo(images[i], c, s, photo_rng(3, i)), 10**8))).pixels
        for i, (c, s) in enumerate((c, s) for c in PHOTO_CONDITIONS for s in c.severities)
    ]
    return np.concatenate([images, np.stack(photos)])  # (N, 28, 28) uint8


def test_both_runtimes_give_the_same_answers(record, pixels):
    assert record.model_args.flip_tta  # the smoke profile flip-averages, as the default does: the parity covers it
    cpu = torch.device("cpu")
    onnx, eager = Classifier(record, cpu, "onnxruntime"), Classifier(record, cpu, "torch")
    assert onnx.runtime == "onnxruntime" and onnx.onnx is not None
    fast, reference = onnx.score(pixels), eager.score(pixels)
    p_fast = np.stack([s.probabilities for s in fast])
    p_ref = np.stack([s.probabilities for s in reference])
    assert p_fast.dtype == p_ref.dtype == np.float32
    assert np.abs(p_fast - p_ref).max() <= PROBABILITY_TOLERANCE
    # Labels and verdicts agree except where the reference itself sits within the tolerance of a tie or a threshold.
    top2 = np.sort(p_ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * PROBABILITY_TOLERANCE
    assert clear.mean() > 0.95
    assert (p_fast.argmax(1) == p_ref.argmax(1))[clear].all()
    policy = record.abstention
    assert policy is not None
    near = np.abs(p_ref.max(1) - policy.confidence_threshold) <= 2 * PROBABILITY_TOLERANCE
    pairs = zip(fast, reference, strict=True)
    same = np.array([a.confident == b.confident and a.unsure_reason == b.unsure_reason for a, b in pairs])
    assert same[~near].all()
    # Both kinds of answer occur, so the comparison covered both sides of the thresholds.
    assert 0 < sum(s.confident for s in reference) < len(reference)


def test_the_graph_is_one_module_of_the_torch_functions(record, pixels):
    """ScoringGraph in eager torch (the torch runtime) equals the functions it is made of, called one by one: the
    network's descriptor and logits, the calibrated softmax, the policy's OOD score as a scan and as a photo."""
    from fmnist.core.model import normalize
    from fmnist.trust.calibration import softmax

    cpu = torch.device("cpu")
    graph = ScoringGraph(record, record.build(cpu))
    network = record.build(cpu)
    with torch.inference_mode():
        probabilities, ood, distance = graph(torch.from_numpy(pixels[:64]))
        features, logits = network.describe(normalize(torch.from_numpy(pixels[:64]), record.mean, record.std))
        policy = record.abstention
        reference = softmax(logits, record.temperature).numpy(), policy.ood_scores(logits, features).numpy()
        as_photos = policy.ood_scores(logits, features, np.ones(64, dtype=bool)).numpy()
    np.testing.assert_allclose(probabilities.numpy(), reference[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ood.numpy(), reference[1], rtol=1e-9)
    # The smoke run's policy has photo components (its fit has real photos): a photo's score counts its distance to
    # them, which can only bring it closer.
    assert policy.photo_means is not None
    np.testing.assert_allclose(distance.numpy(), policy.component_distances(features).numpy(), rtol=1e-9)
    np.testing.assert_allclose(policy.photo_scores(ood.numpy(), distance.numpy()), as_photos, rtol=1e-9)
    assert (as_photos <= reference[1]).all()
    torch_runtime = Classifier(record, cpu, "torch").score(pixels[:64])
    np.testing.assert_array_equal(
        np.stack([s.probabilities for s in torch_runtime]), probabilities.numpy().astype(np.float32)
    )


def test_a_record_without_a_policy_scores_any_batch_size(record, pixels):
    """Records made before abstention existed: no OOD score, and the exported graph keeps its batch size dynamic."""
    legacy = ModelRecord.from_bytes(record.to_bytes())
    legacy.abstention = None
    cpu = torch.device("cpu")
    fast, reference = (
        Classifier(legacy, cpu, "onnxruntime").score(pixels[:5]),
        Classifier(legacy, cpu).score(pixels[:5]),
    )
    assert len(fast) == len(reference) == 5
    p_fast, p_ref = (np.stack([s.probabilities for s in x]) for x in (fast, reference))
    assert np.abs(p_fast - p_ref).max() <= PROBABILITY_TOLERANCE


def test_single_images_and_batches_agree(record, pixels):
    onnx = Classifier(record, torch.device("cpu"), "onnxruntime")
    batch = np.stack([s.probabilities for s in onnx.score(pixels[:32])])
    singles = np.stack([onnx.score(pixels[i : i + 1])[0].probabilities for i in range(32)])
    assert np.abs(batch - singles).max() <= PROBABILITY_TOLERANCE
    assert onnx.score(pixels[:0]) == []


def test_a_policy_fitted_after_construction_is_used(record, pixels):
    """The graph carries the policy; a record whose policy is replaced must not be scored with the old one."""
    import dataclasses

    own = ModelRecord.from_bytes(record.to_bytes())
    onnx = Classifier(own, torch.device("cpu"), "onnxruntime")
    assert own.abstention is not None
    strict = dataclasses.replace(own.abstention, confidence_threshold=1.1)  # nothing is that sure
    own.abstention = strict
    assert not any(s.confident for s in onnx.score(pixels[:50]))


def test_the_service_falls_back_to_torch_with_a_log_line(smoke_run, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without the package looks like
    with caplog.at_level(logging.WARNING, logger="serving.model_loading"):
        served = load_model(Settings(run=smoke_run.pathspec, device="cpu"))
    assert served.classifier.runtime == "torch" and served.info["runtime"] == "torch"
    assert "serving with torch, not ONNX Runtime: onnxruntime not installed" in caplog.text
    with pytest.raises(ModelLoadError, match="runtime 'onnxruntime' requested but unavailable"):
        load_model(Settings(run=smoke_run.pathspec, device="cpu", runtime="onnxruntime"))


def test_the_service_uses_onnx_runtime_when_present(smoke_run):
    served = load_model(Settings(run=smoke_run.pathspec, device="cpu"))
    assert served.classifier.runtime == "onnxruntime" and served.info["runtime"] == "onnxruntime"
    torch_only = load_model(Settings(run=smoke_run.pathspec, device="cpu", runtime="torch"))
    assert torch_only.classifier.runtime == "torch"


def test_an_unavailable_runtime_is_a_clear_error(record, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(RuntimeUnavailable, match="onnx not installed"):
        Classifier(record, torch.device("cpu"), "onnxruntime")
