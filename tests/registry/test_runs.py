"""registry.runs against real runs of the stand-in FashionFlow in a private local datastore: lookup by id, pathspec
and tag, the newest tagged run winning, and the errors that name what was missing."""

from __future__ import annotations

import metaflow
import pytest

from registry.artifacts import MODEL, MODEL_FLOW
from registry.runs import (
    NoRunError,
    RunLookupError,
    find_run,
    latest_successful,
    model_record_bytes,
    newest_tagged,
    pathspec,
)
from tests.support.releases import private_datastore, stand_in_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three stand-in runs, oldest first: two with records, one without the model artifact."""
    root = private_datastore(tmp_path_factory.mktemp("registry"))
    runs = {
        "first": stand_in_run(root, b"first record"),
        "second": stand_in_run(root, b"second record"),
        "bare": stand_in_run(root, None),
    }
    return root, runs


@pytest.fixture(autouse=True)
def _point_at(store):
    metaflow.metadata(f"local@{store[0]}")


def test_pathspec_accepts_an_id_or_a_pathspec():
    assert pathspec("123") == f"{MODEL_FLOW}/123"
    assert pathspec("OtherFlow/7") == "OtherFlow/7"


def test_a_run_by_id_or_pathspec_and_its_record(store):
    _, runs = store
    by_pathspec = find_run(runs["first"])
    by_id = find_run(runs["first"].split("/")[1])
    assert by_pathspec.pathspec == by_id.pathspec == runs["first"]
    assert model_record_bytes(by_id) == b"first record"


def test_without_a_name_or_tag_the_latest_successful_run(store):
    _, runs = store
    assert find_run().pathspec == runs["bare"]


def test_the_newest_run_carrying_the_tag_wins(store):
    """Newest by when it finished, whatever order the tags were added in (the local metadata provider rewrites a
    run's creation time when its tags change)."""
    _, runs = store
    for name in ("second", "first"):
        metaflow.namespace(None)
        metaflow.Run(runs[name]).add_tag("registry-test")
    assert find_run(tag="registry-test").pathspec == runs["second"]
    assert newest_tagged("registry-test").pathspec == runs["second"]
    assert newest_tagged("no-run-has-this-tag") is None


def test_errors_name_what_is_missing(store):
    _, runs = store
    with pytest.raises(NoRunError, match="no successful FashionFlow run is tagged 'no-run-has-this-tag'"):
        find_run(tag="no-run-has-this-tag")
    with pytest.raises(RunLookupError, match="cannot find FashionFlow/999999"):
        find_run("FashionFlow/999999")
    with pytest.raises(RunLookupError, match=f"has no '{MODEL}' artifact"):
        model_record_bytes(find_run(runs["bare"]))


def test_tagging_an_older_run_does_not_make_it_the_latest(store):
    """The local metadata provider rewrites a run's creation time when its tags change, and `Flow.latest_successful_run`
    goes by that time: tagging an old run must not make it the run served without a name or tag."""
    _, runs = store
    metaflow.namespace(None)
    metaflow.Run(runs["first"]).add_tag("tagged-later")
    assert find_run().pathspec == runs["bare"]
    assert latest_successful().pathspec == runs["bare"]
