"""The CNN family builds at every shape and the model record round-trips without pickle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist.core.model import FashionCNN, ModelArgs, count_parameters, normalize
from fmnist.release.model_record import ModelRecord, RecordError


@pytest.mark.parametrize("width,depth", [(4, 0), (16, 0), (24, 0), (8, 2)])
def test_logits_shape(width, depth):
    model = FashionCNN(ModelArgs(width=width, depth=depth)).eval()
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_depth_and_width_add_parameters():
    base = count_parameters(FashionCNN(ModelArgs(width=8)))
    assert count_parameters(FashionCNN(ModelArgs(width=16))) > base
    assert count_parameters(FashionCNN(ModelArgs(width=8, depth=1))) > base


def test_parameter_count_of_the_plain_family_follows_its_shape():
    """Four bias-free 3x3 convs (1->w, w->2w, 2w->4w, 4w->4w), batch norm (2 per channel), a 4w->10 head."""

    def expected(w: int) -> int:
        convs = 9 * (w + w * 2 * w + 2 * w * 4 * w + 4 * w * 4 * w)
        return convs + 2 * (w + 2 * w + 4 * w + 4 * w) + 4 * w * 10 + 10

    for width in (16, 24):
        assert count_parameters(FashionCNN(ModelArgs(width=width))) == expected(width)


def test_normalize_shapes_and_scales():
    x = normalize(torch.full((3, 28, 28), 255, dtype=torch.uint8), mean=0.5, std=0.25)
    assert x.shape == (3, 1, 28, 28)
    assert torch.allclose(x, torch.full_like(x, 2.0))


def test_record_round_trip_rebuilds_the_same_function():
    torch.manual_seed(0)
    model = FashionCNN(ModelArgs(width=8, depth=1)).eval()
    record = ModelRecord(
        state_dict=model.state_dict(), model_args=model.args, temperature=1.5, metrics={"val_accuracy": 0.9}
    )
    again = ModelRecord.from_bytes(record.to_bytes())
    assert again.model_args == model.args and again.temperature == 1.5 and again.metrics == {"val_accuracy": 0.9}
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(again.build()(x), model(x))


@pytest.mark.parametrize("blob", [b"", b"not a record", b"\x08" + b"\x00" * 7 + b"{}"])
def test_garbage_is_not_a_record(blob):
    with pytest.raises(RecordError, match="not a FashionFlow model record"):
        ModelRecord.from_bytes(blob)


def test_record_carries_the_abstention_policy_and_old_records_still_load():
    import json

    import numpy as np
    from safetensors.torch import save as save_safetensors

    from fmnist.trust.abstention_fit import fit_abstention

    torch.manual_seed(0)
    model = FashionCNN(ModelArgs(width=4)).eval()
    logits, features = torch.randn(200, 10), torch.rand(200, 16)
    policy = fit_abstention(logits, features, np.arange(200) % 10, temperature=1.0)
    record = ModelRecord(state_dict=model.state_dict(), model_args=model.args, abstention=policy)
    again = ModelRecord.from_bytes(record.to_bytes())
    assert again.abstention is not None and again.abstention.metadata() == policy.metadata()
    assert torch.equal(again.abstention.precision, policy.precision)
    assert set(again.state_dict) == set(model.state_dict())  # the policy's tensors are not weights
    # A record of format 1, written before abstention existed, loads with no policy.
    meta = {**record.metadata(), "format": "fashionflow.model/1"}
    del meta["abstention"]
    old = save_safetensors(dict(model.state_dict()), metadata={"fashionflow": json.dumps(meta)})
    assert ModelRecord.from_bytes(old).abstention is None


def test_a_bf16_trained_model_rebuilds_bit_for_bit_and_exports_with_parity():
    """bf16 autocast (what `compute.amp: auto` picks on CPUs with native bf16) changes how the weights were learnt,
    not what they are: fp32 tensors that the record rebuilds exactly and that the ONNX graph runs as torch does."""
    from fmnist.core.config import HParams
    from fmnist.core.data import PIXEL_MEAN, PIXEL_STD, Splits, load_dataset
    from fmnist.release.scoring_graph import OnnxScorer, ScoringGraph, runtime_available
    from fmnist.training.loop import train_model

    data = load_dataset(download=False)
    images, labels = data.train_images[:600], data.train_labels[:600]  # real training images
    splits = Splits(images[:500], labels[:500], images[500:], labels[500:])
    hp = HParams(width=8, epochs=1, batch_size=100, lr=0.05)
    result = train_model(hp, splits, torch.device("cpu"), seed=0, amp=torch.bfloat16)
    assert all(v.dtype in (torch.float32, torch.int64) for v in result.state_dict.values())
    record = ModelRecord.from_bytes(ModelRecord(state_dict=result.state_dict, model_args=result.model_args).to_bytes())
    assert record.model_args == result.model_args and count_parameters(record.build()) == result.parameters
    assert all(torch.equal(record.state_dict[k], v) for k, v in result.state_dict.items())
    rebuilt = ModelRecord(state_dict=result.state_dict, model_args=result.model_args).build()
    x = normalize(torch.from_numpy(images[500:]), PIXEL_MEAN, PIXEL_STD)
    with torch.no_grad():
        assert torch.equal(record.build()(x), rebuilt(x))
    if runtime_available() is not None:
        pytest.skip(str(runtime_available()))
    graph = ScoringGraph(record, record.build())
    with torch.inference_mode():
        reference = graph(torch.from_numpy(images[500:]))[0].numpy()  # (100, 10) float64
    probabilities = OnnxScorer(graph)(images[500:])[0]
    assert (
        np.abs(probabilities - reference).max() <= 2e-5
    )  # float32 rounding, as in tests/release/test_scoring_graph.py
    assert (probabilities.argmax(1) == reference.argmax(1)).mean() >= 0.99


def test_flip_averaging_scores_an_image_and_its_mirror_outside_training_only():
    """`flip_tta` adds no parameters; in eval mode the logits are the means over the image and its mirror of what the
    same weights give without it, and the descriptor is the image's own; in training mode it is the plain network."""
    from fmnist.core.config import HParams
    from fmnist.training.loop import model_args

    assert model_args(HParams(flip_tta=True)).flip_tta and not model_args(HParams()).flip_tta
    torch.manual_seed(0)
    averaged = FashionCNN(ModelArgs(width=8, flip_tta=True))
    plain = FashionCNN(ModelArgs(width=8))
    plain.load_state_dict(averaged.state_dict())
    assert count_parameters(averaged) == count_parameters(plain)
    x = torch.randn(6, 1, 28, 28)
    averaged.eval(), plain.eval()
    with torch.no_grad():
        logits = averaged(x)
        assert logits.shape == (6, 10) and averaged.views == 2
        assert torch.allclose(logits, (plain(x) + plain(x.flip(-1))) / 2, atol=1e-6)
        assert not torch.allclose(logits, plain(x), atol=1e-3)  # the mirror moved it
        features, described = averaged.describe(x)
        f_plain, _ = plain.describe(x)
        assert features.shape == f_plain.shape and torch.equal(described, logits)
        assert torch.allclose(features, f_plain, atol=1e-6)
        assert torch.allclose(averaged(x[:1]), logits[:1], atol=1e-6)  # each image on its own: no batch mixing
    averaged.train(), plain.train()
    assert averaged.views == 1 and torch.equal(averaged(x), plain(x))


def test_a_flip_averaged_record_rebuilds_bit_for_bit_and_records_without_the_field_load_plain():
    import json

    from safetensors.torch import save as save_safetensors

    torch.manual_seed(0)
    model = FashionCNN(ModelArgs(width=8, flip_tta=True)).eval()
    record = ModelRecord(state_dict=model.state_dict(), model_args=model.args)
    again = ModelRecord.from_bytes(record.to_bytes())
    assert again.model_args.flip_tta and again.model_args == model.args
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.build()(x), model(x))
    # A record written before the option existed has no such field: it rebuilds the single-view network it was.
    meta = record.metadata()
    meta["model_args"] = {k: v for k, v in meta["model_args"].items() if k != "flip_tta"}
    old = save_safetensors(dict(model.state_dict()), metadata={"fashionflow": json.dumps(meta)})
    assert ModelRecord.from_bytes(old).model_args.flip_tta is False
