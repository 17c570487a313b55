"""ScoreFlow against the local AWS stand-in (moto's server on loopback; fixture `aws` of tests/support/aws.py).

- Inputs read from an `s3://` prefix and the table written to an `s3://` prefix, through Metaflow's S3 client as the
  flow reads and writes them; the run's metadata and artifacts stay in the session's local datastore, where the smoke
  FashionFlow run whose model scores lives. One small run: a handful of real scans, two product photos and every
  kind of bad file. The flow reaches the stand-in through a faulty network (tests/support/s3_faults.py): the first
  attempt of every listing, read and write is throttled, fails with a 500, stalls past the client's read timeout or
  is reset, in turn; the table still has every key exactly once.
- `step-functions create --only-json` for the batch score profile: the score state, and only it, goes to the
  profile's queue, image, CPUs, memory and retries; the other states get Metaflow's defaults.
"""

from __future__ import annotations

import io
import json
import os

import pandas as pd
import pytest
import torch  # noqa: F401 - before metaflow: torch fails to import once metaflow's vendored typing_extensions is loaded

from fmnist.release.catalogue import ScoreProfile, parse_score_profile
from tests.support.aws import BUCKET, batch_states, step_functions_json
from tests.support.catalogue import BAD_FILES, SCORE_FLOW_FILE, run_score_flow, score_profile, write_catalogue
from tests.support.flows import CONFIGS
from tests.support.s3_faults import FAULTS, FaultyS3Proxy

pytestmark = pytest.mark.cloud

INPUTS = "catalogue/"
OUTPUTS = "scores/"


# The S3 client's read timeout in the faulty run (a user's METAFLOW_DATATOOLS_CLIENT_PARAMS), and how long the proxy
# holds a stalled request: past it.
READ_TIMEOUT_S, STALL_S = 2, 4


@pytest.fixture(scope="module")
def scored_on_s3(aws, smoke_run, tmp_path_factory):
    """The catalogue uploaded under s3://<bucket>/catalogue/, scored in two shards through the faulty network, the
    table written to scores/; the run, the files, an S3 client and the faults injected."""
    folder = tmp_path_factory.mktemp("s3-catalogue")
    files = write_catalogue(folder, scans=6, photos=2)
    s3 = aws["client"]("s3")
    for name, data in files.items():
        s3.put_object(Bucket=BUCKET, Key=INPUTS + name, Body=data)
    s3.put_object(Bucket=BUCKET, Key=INPUTS + "new-folder/", Body=b"")  # a console's folder marker: no image, no row
    profile = score_profile(tmp_path_factory.mktemp("s3-score") / "profile.yaml", shards=2, batch_size=4)
    with FaultyS3Proxy(aws["endpoint"], stall_seconds=STALL_S) as proxy:
        # The stand-in's credentials, reached through the proxy, for Metaflow's S3 client; the datastore stays the
        # session's local one.
        env = {**os.environ, **{k: v for k, v in aws["env"].items() if k.startswith("AWS_")}}
        env.update(METAFLOW_S3_ENDPOINT_URL=proxy.endpoint, METAFLOW_DEFAULT_DATASTORE="local")
        env["METAFLOW_DATATOOLS_CLIENT_PARAMS"] = json.dumps({"config": {"read_timeout": READ_TIMEOUT_S}})
        result = run_score_flow(
            profile,
            env=env,
            input=f"s3://{BUCKET}/{INPUTS}",
            output=f"s3://{BUCKET}/{OUTPUTS}",
            run=smoke_run.pathspec,
            format="parquet",
        )
    assert result.status == "successful", result.stderr[-3000:]
    return result.run, files, s3, proxy


def test_every_kind_of_s3_fault_was_injected_into_listings_reads_and_writes(scored_on_s3):
    """The faults the table survived: each kind at least once, into listings and reads (GET), size checks (HEAD)
    and the table's write (PUT); every faulted request was retried and then reached the stand-in."""
    *_, proxy = scored_on_s3
    assert {fault for fault, _ in proxy.faults} == set(FAULTS), proxy.faults
    assert {method for _, method in proxy.faults} >= {"GET", "HEAD", "PUT"}, proxy.faults
    for method in ("GET", "HEAD", "PUT"):
        assert proxy.forwarded[method] >= sum(n for (_, m), n in proxy.faults.items() if m == method)


def test_the_table_written_to_s3_has_every_key_once_with_bad_files_as_errors(scored_on_s3):
    run, files, s3, _ = scored_on_s3
    key = f"{OUTPUTS}ScoreFlow-{run.id}.parquet"
    assert run.data.output_url == f"s3://{BUCKET}/{key}"
    written = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())).convert_dtypes()
    urls = {f"s3://{BUCKET}/{INPUTS}{name}" for name in files}
    assert written["path"].is_unique and set(written["path"]) == urls
    errors = dict(zip(written["path"], written["error"], strict=True))
    for name, reason in BAD_FILES.items():
        assert str(errors.pop(f"s3://{BUCKET}/{INPUTS}{name}")).startswith(reason), name
    assert all(pd.isna(e) for e in errors.values())  # every image was scored
    assert written.loc[written["error"].isna(), "class_index"].notna().all()
    # What the bucket holds is the run's own table, row for row.
    pd.testing.assert_frame_equal(written, run.data.table.convert_dtypes())
    assert run.data.summary["unreadable"] == len(BAD_FILES)


def test_step_functions_sends_only_the_score_state_to_the_profiles_batch_queue(aws):
    profile_path = CONFIGS / "score" / "batch.yaml"
    batch = ScoreProfile(**parse_score_profile(profile_path.read_text())).compute.batch
    assert batch is not None
    # Metaflow's defaults for the steps without a @batch of their own differ from the profile's, so that each
    # state's queue, image and resources show where it came from.
    default_queue, default_image = "fashionflow-default", "python:3.11-slim"
    assert (default_queue, default_image) != (batch.queue, batch.image)
    client = aws["client"]("batch")
    (environment,) = client.describe_compute_environments()["computeEnvironments"]
    client.create_job_queue(  # Metaflow looks the queue up while compiling
        jobQueueName=default_queue,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment["computeEnvironmentArn"]}],
    )
    machine = step_functions_json(
        aws,
        SCORE_FLOW_FILE,
        profile_path,
        METAFLOW_BATCH_JOB_QUEUE=default_queue,
        METAFLOW_BATCH_CONTAINER_IMAGE=default_image,
    )
    states = batch_states(machine)
    assert set(states) == {"start", "score", "join", "end"}
    for name, state in states.items():
        params = state["Parameters"]
        resources = {r["Type"]: r["Value"] for r in params["ContainerOverrides"]["ResourceRequirements"]}
        definition = client.describe_job_definitions(jobDefinitions=[params["JobDefinition"]])["jobDefinitions"][0]
        image = definition["containerProperties"]["image"]
        attempts = params.get("RetryStrategy", {}).get("Attempts", 1)
        if name == "score":
            assert resources == {"VCPU": str(batch.cpu), "MEMORY": str(batch.memory)}  # a CPU job: no GPU asked
            assert (params["JobQueue"], image, attempts) == (batch.queue, batch.image, batch.retries + 1)
            assert "step score" in params["ContainerOverrides"]["Command"][-1]
        else:
            assert (params["JobQueue"], image, attempts) == (default_queue, default_image, 1), name
            assert "GPU" not in resources and resources.get("VCPU") != str(batch.cpu), name
