"""The CNN family builds at every shape and the model record round-trips without pickle."""

from __future__ import annotations

import pytest
import torch

from fmnist.model import FashionCNN, ModelArgs, count_parameters, normalize
from fmnist.model_record import ModelRecord, RecordError


@pytest.mark.parametrize("width,depth", [(4, 0), (16, 0), (8, 2)])
def test_logits_shape(width, depth):
    model = FashionCNN(ModelArgs(width=width, depth=depth)).eval()
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_depth_and_width_add_parameters():
    base = count_parameters(FashionCNN(ModelArgs(width=8)))
    assert count_parameters(FashionCNN(ModelArgs(width=16))) > base
    assert count_parameters(FashionCNN(ModelArgs(width=8, depth=1))) > base


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

    from fmnist.abstention import fit_abstention

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
