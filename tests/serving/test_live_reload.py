"""The service follows a tag: it switches to a newly tagged run's model without a restart, answers every request
during the switch, names in every answer the run whose model gave it, and never switches to a model that cannot be
loaded or warmed up.

The service runs as a real process (`python -m serving.cli --tag ... --reload-seconds ...`) on loopback, under a
short bounded load of a few concurrent clients; the tag is moved with Metaflow's Client API, as PromoteFlow moves it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid

import metaflow
import numpy as np
import pytest
import torch

from fmnist.release.classifier import Classifier, Scored
from fmnist.release.model_record import ModelRecord
from serving.inference import MicroBatcher
from serving.settings import Settings
from tests.support.images import encode, real_test_images
from tests.support.releases import Load, ServiceProcess, private_datastore, second_smoke_run, stand_in_run

INTERVAL = 0.5  # seconds between the service's looks at the tag, in these tests


@pytest.fixture(scope="module")
def uploads() -> list[bytes]:
    images, _ = real_test_images()
    return [encode(p) for p in images[:24]]


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of one Prometheus series in /metrics text, e.g. metric(t, "x_total", '{stage="load"}')."""
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def wait_for(condition, timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def move_tag(tag: str, to: str, away_from: str) -> None:
    """Put `tag` on run `to` first, then take it off `away_from` (PromoteFlow's order)."""
    metaflow.namespace(None)
    metaflow.Run(to).add_tag(tag)
    metaflow.Run(away_from).remove_tag(tag)


def assert_each_client_switched_once(answers, clients: int, old: str, new: str) -> None:
    """A client sends one request after another: once it got an answer from the new model, never the old again."""
    for client in range(clients):
        assert Load.runs_in_order(answers, client) in ([old, new], [old], [new]), client


# --- settings -------------------------------------------------------------------------------------------------------


def test_reload_interval_defaults_to_30s_with_a_tag_and_is_off_otherwise():
    assert Settings(tag="production").reload_interval == 30.0
    assert Settings(tag="production", reload_seconds=0).reload_interval == 0.0
    assert Settings(tag="production", reload_seconds=2).reload_interval == 2.0
    assert Settings().reload_interval == 0.0
    assert Settings(run="FashionFlow/1", reload_seconds=5).reload_interval == 0.0  # one run: nothing to follow


def test_the_micro_batcher_scores_each_request_with_the_model_it_started_with():
    """With server-side batching, requests queued around a switch are scored by their own model, not the newest."""

    class Model:
        def __init__(self, value: float) -> None:
            self.value = value

        def score(self, pixels, empty, photo=None):
            return [Scored(np.full(10, self.value, dtype=np.float32), True, True, None, "tops") for _ in pixels]

    old, new = Model(0.1), Model(0.2)

    async def requests():
        batcher = MicroBatcher(old, 64)  # type: ignore[arg-type]
        batcher.start()
        pixels = np.zeros((28, 28), dtype=np.uint8)
        results = await asyncio.gather(*(batcher.score(pixels, False, new if i % 2 else old) for i in range(20)))  # type: ignore[arg-type]
        await batcher.stop()
        return results

    results = asyncio.run(requests())
    assert [float(r.probabilities[0]) for r in results] == pytest.approx([0.2 if i % 2 else 0.1 for i in range(20)])


# --- the real flow's runs ---------------------------------------------------------------------------------------------


def test_service_switches_to_a_newly_tagged_run_without_a_restart_or_a_failed_request(smoke_run, uploads, tmp_path):
    """Two real smoke runs: the service starts on the tagged one; the tag moves to the other under load."""
    second = second_smoke_run()  # trained before the service starts, so training does not compete with the load
    old, new = smoke_run.pathspec, second.pathspec
    tag = f"live-{uuid.uuid4().hex[:8]}"
    metaflow.namespace(None)
    metaflow.Run(old).add_tag(tag)
    with ServiceProcess(tmp_path / "service.log", "--tag", tag, "--reload-seconds", str(INTERVAL)) as service:
        assert service.wait_ready()["run"] == old
        assert service.get("/model").json()["following"] == f"tag {tag!r} every {INTERVAL:g}s"
        load = Load(service.url, uploads).start()
        time.sleep(1.5)  # the old model answers for a while
        moved = time.monotonic()
        move_tag(tag, new, old)
        wait_for(lambda: service.get("/model").json()["run"] == new, 60, "/model to name the new run")
        switch_seconds = time.monotonic() - moved
        time.sleep(1.5)  # and the new one for a while
        answers = load.stop()
        text = service.get("/metrics").text
        log = service.log()

    assert not load.failures(), load.failures()[:5]
    assert {a.run for a in answers} == {old, new}
    assert_each_client_switched_once(answers, load.clients, old, new)
    assert switch_seconds < INTERVAL + 30, switch_seconds  # one look at the tag, then the load and the warm-up
    assert metric(text, "fashionflow_model_info", f'{{run="{new}"}}') == 1.0
    assert metric(text, "fashionflow_model_info", f'{{run="{old}"}}') is None
    assert metric(text, "fashionflow_model_switches_total") == 1.0
    assert f"switched the served model from {old} to {new}" in log
    before = sum(a.run == old for a in answers)
    print(
        f"switch: /model changed {switch_seconds:.2f}s after the tag moved; {len(answers)} requests by"
        f" {load.clients} clients, {before} answered by the old model, {len(answers) - before} by the new, 0 failed"
    )


# --- broken candidates (a stand-in FashionFlow in a private datastore) ----------------------------------------------


def _unwarmable(record: ModelRecord) -> bytes:
    """A record that loads (consistent shapes) but fails on the first forward pass: its abstention statistics are of a
    smaller feature space than the network's."""
    policy = record.abstention
    assert policy is not None
    dim = policy.class_means.shape[1] - 1
    photo_means = None if policy.photo_means is None else policy.photo_means[:, :dim].clone()
    broken = dataclasses.replace(
        policy,
        class_means=policy.class_means[:, :dim].clone(),
        precision=policy.precision[:dim, :dim].clone(),
        photo_means=photo_means,
    )
    return dataclasses.replace(record, abstention=broken).to_bytes()


def _hotter(record: ModelRecord) -> bytes:
    """The same network at three times the temperature: other probabilities, so answers tell the models apart."""
    return dataclasses.replace(record, temperature=record.temperature * 3).to_bytes()


def test_a_broken_candidate_is_not_switched_to_and_answers_name_the_model_that_gave_them(smoke_run, uploads, tmp_path):
    good = smoke_run.data.calibrated_model
    record = ModelRecord.from_bytes(good)
    store = private_datastore(tmp_path / "datastore")
    first = stand_in_run(store, good)
    corrupt = stand_in_run(store, b"these bytes are not a model record")
    missing = stand_in_run(store, None)  # a run without the `calibrated_model` artifact
    unwarmable = stand_in_run(store, _unwarmable(record))
    hotter = stand_in_run(store, _hotter(record))
    metaflow.metadata(f"local@{store}")
    metaflow.namespace(None)
    metaflow.Run(first).add_tag("production")

    env = {"METAFLOW_DATASTORE_SYSROOT_LOCAL": str(store)}
    options = ("--tag", "production", "--reload-seconds", str(INTERVAL))
    with ServiceProcess(tmp_path / "service.log", *options, env=env) as service:

        def failed(stage: str) -> float:
            text = service.get("/metrics").text
            return metric(text, "fashionflow_model_reload_failures_total", f'{{stage="{stage}"}}') or 0.0

        assert service.wait_ready()["run"] == first
        current = first
        for broken, stage, message in [
            (corrupt, "load", "not a FashionFlow model record"),
            (missing, "load", "has no 'calibrated_model' artifact"),
            (unwarmable, "warm_up", "warm_up failed"),
        ]:
            before = failed(stage)
            move_tag("production", broken, current)
            current = broken
            wait_for(lambda stage=stage, before=before: failed(stage) > before, 30, f"a failed {stage} of {broken}")
            assert service.get("/model").json()["run"] == first  # the old model keeps serving
            ready = service.get("/ready").json()
            assert ready["ready"] is True and ready["run"] == first
            log = service.log()
            assert f"not switching to {broken}" in log and message in log, log[-2000:]

        load = Load(service.url, uploads).start()
        time.sleep(1.0)
        move_tag("production", hotter, current)
        wait_for(lambda: service.get("/model").json()["run"] == hotter, 30, "the switch to the good run")
        time.sleep(1.0)
        answers = load.stop()
        text = service.get("/metrics").text

    assert not load.failures(), load.failures()[:5]
    assert {a.run for a in answers} == {first, hotter}
    assert_each_client_switched_once(answers, load.clients, first, hotter)
    assert metric(text, "fashionflow_model_switches_total") == 1.0
    # Every answer's probabilities are those of the model of the run it names, not the other one's.
    expected = {}
    for run, blob in [(first, good), (hotter, _hotter(record))]:
        classifier = Classifier(ModelRecord.from_bytes(blob), torch.device("cpu"))
        expected[run] = np.stack([s.probabilities for s in classifier.classify_uploads(uploads)])
    assert not np.allclose(expected[first], expected[hotter], atol=1e-3)
    for answer in answers:
        assert answer.probabilities == pytest.approx(expected[answer.run][answer.image].tolist(), abs=1e-5)
