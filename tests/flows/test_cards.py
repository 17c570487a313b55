"""The cards of a smoke run exist for every stage, hold the expected sections, and are self-contained HTML.

One smoke run through Metaflow's Runner API in a throw-away local datastore; the cards are read back with
`metaflow.cards.get_cards`. The model record that evaluate stores carries the fitted temperature and the
provenance the service reports.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from fmnist.core.data import CLASS_NAMES
from fmnist.release.model_record import ModelRecord

_DATA = re.compile(r'window\.__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"')
_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']https?://""")


def card_of(task) -> tuple[str, list[dict[str, Any]]]:
    """(html, flat list of components) of the task's one card."""
    from metaflow.cards import get_cards

    cards = list(get_cards(task))
    assert len(cards) == 1, f"{task.pathspec}: {len(cards)} cards"
    html = cards[0].get()
    match = _DATA.search(html)
    assert match, "card data not found in the HTML"
    flat: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "type" in node:
                flat.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(base64.b64decode(match.group(1)))["components"])
    return html, flat


def text_of(components: list[dict[str, Any]]) -> str:
    """All markdown and table text of a card, for looking up sections."""
    parts = [c.get("source", "") for c in components if c["type"] == "markdown"]
    parts += [
        json.dumps(c.get("columns"), ensure_ascii=False) + json.dumps(c.get("data"), ensure_ascii=False)
        for c in components
        if c["type"] == "table"
    ]
    return "\n".join(parts)


def images_of(components: list[dict[str, Any]]) -> list[str]:
    return [c["src"] for c in components if c["type"] == "image" and c.get("src")]


def assert_self_contained(html: str, components: list[dict[str, Any]]) -> None:
    assert not _EXTERNAL.search(html), "card loads something from the network"
    assert all(src.startswith("data:image/png;base64,") for src in images_of(components))


@pytest.fixture(scope="module")
def run(smoke_run):
    """The session's smoke run (tests/conftest.py): its tasks write their cards where `get_cards` reads them."""
    return smoke_run


def test_load_card_summarises_the_dataset(run):
    task = run["load"].task
    html, components = card_of(task)
    text = text_of(components)
    for section in ("# Dataset", "Fingerprint", "## Class counts", "## Sample grid per class"):
        assert section in text, section
    assert task.data.data_fingerprint in text
    assert all(name in text for name in CLASS_NAMES)
    assert len(images_of(components)) == 2  # class counts chart, sample grid
    assert_self_contained(html, components)


def test_every_trial_has_a_live_card_with_its_curves(run):
    tasks = list(run["train"])
    assert len(tasks) == len(run["start"].task.data.grid)
    for task in tasks:
        html, components = card_of(task)
        text = text_of(components)
        assert f"# Trial {task.data.trial_index}" in text
        assert "## Done" in text and "Validation accuracy" in text
        progress = [c for c in components if c["type"] == "progressBar"]
        assert progress and progress[0]["value"] == progress[0]["max"] == task.data.hparams["epochs"]
        assert len(images_of(components)) == 1  # loss and accuracy curves
        assert_self_contained(html, components)


def test_join_card_is_a_leaderboard_with_the_sweep_chart(run):
    task = run["join"].task
    html, components = card_of(task)
    text = text_of(components)
    assert "# Leaderboard" in text and "★" in text
    assert f"trial {task.data.best_trial}" in text
    assert "## Validation accuracy against the swept hyper-parameters" in text
    assert len(images_of(components)) == 1
    assert_self_contained(html, components)


def test_evaluate_card_holds_the_whole_report(run):
    task = run["evaluate"].task
    html, components = card_of(task)
    text = text_of(components)
    for section in (
        "# Evaluation report",
        "## Test accuracy",
        "95% confidence interval",
        "## Per-class precision, recall and F1",
        "## Confusion matrix",
        "### Most frequent confusions",
        "## Calibration",
        "ECE before",
        "## Robustness",
        "shift_1px",
        "hflip",
        "## Product photos",
        "grey_backdrop",
        "Worst condition at its realistic severity",
        "## Unsure answers",
        "correct among confident answers",
        "marked unsure",
        "## Real photographs",
        "hat",
        "right when class-confident",
        "right family when confident",
        "fit without it: class-confident, right",
        "leave-one-condition-out",
        "## Misclassified test images",
        "## Provenance",
        "data_fingerprint",
        "code_version",
    ):
        assert section in text, section
    # confusion heat map, reliability diagram, robustness chart, photo chart, real photographs answered wrong,
    # risk-coverage curve, misclassified gallery
    assert len(images_of(components)) == 7
    assert_self_contained(html, components)


def test_model_record_carries_temperature_and_provenance(run):
    data = run["evaluate"].task.data
    record = ModelRecord.from_bytes(data.calibrated_model)
    calibration = data.report["calibration"]
    assert record.temperature == pytest.approx(calibration["temperature"]) and record.temperature != 1.0
    assert calibration["test_after"]["nll"] <= calibration["test_before"]["nll"]
    assert record.metrics["test_ece_after"] == pytest.approx(calibration["test_after"]["ece"])
    for key in ("data_fingerprint", "profile", "hparams", "code_version", "libraries", "device", "train_seconds"):
        assert key in record.provenance, key
    assert record.provenance["data_fingerprint"] == run["load"].task.data.data_fingerprint
