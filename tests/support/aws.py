"""The local AWS stand-in of the cloud tests: moto's server mode on loopback, for S3, AWS Batch and IAM/EC2.

A pytest plugin (registered by tests/conftest.py's `pytest_plugins`) providing two fixtures:

- `aws` (one per test module): the server with a bucket and the Batch job queues; yields its settings.
- `s3_client`: this process's Metaflow Client pointed at the stand-in, and an S3 client for the bucket.

and two helpers, `step_functions_json` and `batch_states`: a flow's Step Functions state machine rendered against
the stand-in, and its Batch job states.

moto's Docker-free Batch backend is used; its "finish at once" hook is replaced by `LocalContainers`, which runs
each job's command as a local process in a fresh directory (a stand-in container whose PYTHONPATH puts a stale
`fmnist` ahead of the installed one, as an outdated image would), so the jobs really download Metaflow's code
package from S3 and train.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from fmnist.core.config import load_profile
from tests.support.flows import CONFIGS

REGION = "us-east-1"
BUCKET = "fashionflow-test"
SYSROOT = f"s3://{BUCKET}/metaflow"
CPU_QUEUE = "fashionflow-cpu"  # Step Functions runs the other steps on Batch too, from Metaflow's default queue
JOB_ROLE = "arn:aws:iam::123456789012:role/fashionflow-batch"


class LocalContainers:
    """Runs each submitted Batch job's command in a fresh directory, as a container would, and records it."""

    def __init__(self, workdir: Path, base_env: dict[str, str]) -> None:
        self.workdir, self.base_env = workdir, base_env
        self.jobs: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []

    def start(self, backend, include_start_attempt: bool, job) -> None:
        """Replaces moto's `_mark_job_as_finished`: the job is RUNNING until its command exits."""
        backend.backend._jobs[job.job_id] = job
        job.job_started_at = datetime.now()
        job.log_stream_name = job._stream_name
        if include_start_attempt:
            job._start_attempt()
        job.status = "RUNNING"
        thread = threading.Thread(target=self._execute, args=(job,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _execute(self, job) -> None:
        details = job._container_details()
        batch_runtime = {  # what AWS Batch's agent sets in every container
            "AWS_BATCH_JOB_ATTEMPT": str(len(job.attempts)),
            "AWS_BATCH_CE_NAME": "gpu-spot",
            "AWS_BATCH_JQ_NAME": job.job_queue.name,
            "AWS_EXECUTION_ENV": "AWS_ECS_EC2",
        }
        env = {**self.base_env, **batch_runtime, **{e["name"]: e["value"] for e in details["environment"]}}
        cwd = self.workdir / job.job_id
        cwd.mkdir(parents=True)
        proc = subprocess.run(details["command"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        self.jobs.append(
            {
                "id": job.job_id,
                "overrides": job.container_overrides,  # as submitted: resources, command, environment
                "cwd": cwd,
                "returncode": proc.returncode,
                "output": proc.stdout + proc.stderr,
            }
        )
        job.exit_code = proc.returncode
        job._mark_stopped(success=proc.returncode == 0)


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """moto's server on 127.0.0.1 (S3, Batch, IAM, EC2) with a bucket and a GPU job queue; yields its settings."""
    from moto.batch_simple.models import BatchSimpleBackend
    from moto.core.config import default_user_config
    from moto.server import ThreadedMotoServer

    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    saved = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)  # for the boto3 clients of this process
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    # moto's Batch without Docker; its "finish at once" hook becomes "run the command here".
    use_docker = default_user_config["batch"].get("use_docker", True)
    default_user_config["batch"]["use_docker"] = False
    base = tmp_path_factory.mktemp("aws")
    stale = base / "stale-image-site"  # an image whose fmnist is not the launching code's
    (stale / "fmnist").mkdir(parents=True)
    (stale / "fmnist" / "__init__.py").write_text("raise ImportError('stale fmnist from the image')\n")
    containers = LocalContainers(
        base / "containers",
        {
            **creds,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(base),
            "USERNAME": "dev",
            "PYTHONPATH": str(stale),
            "METAFLOW_SKIP_INSTALL_DEPENDENCIES": "1",  # as the Dockerfile's train image sets it
            "WANDB_MODE": "disabled",
        },
    )
    original = BatchSimpleBackend._mark_job_as_finished
    BatchSimpleBackend._mark_job_as_finished = lambda self, include_start_attempt, job: containers.start(
        self, include_start_attempt, job
    )

    import boto3

    def client(service: str):
        return boto3.client(service, endpoint_url=endpoint, region_name=REGION)

    client("s3").create_bucket(Bucket=BUCKET)
    queue = load_profile(CONFIGS / "batch.yaml").compute.batch.queue
    _create_queues(client, [queue, CPU_QUEUE])

    env = {
        **creds,
        "USERNAME": "dev",
        "WANDB_MODE": "disabled",
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": SYSROOT,
        "METAFLOW_S3_ENDPOINT_URL": endpoint,
        "METAFLOW_DEFAULT_METADATA": "local",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(base / "local"),
        "METAFLOW_ECS_S3_ACCESS_IAM_ROLE": JOB_ROLE,
        # Metaflow builds its Batch client with boto3 defaults: boto3's own variable points it at the stand-in.
        "AWS_ENDPOINT_URL_BATCH": endpoint,
    }
    yield {"endpoint": endpoint, "env": env, "client": client, "queue": queue, "containers": containers}

    BatchSimpleBackend._mark_job_as_finished = original
    default_user_config["batch"]["use_docker"] = use_docker
    # moto keeps its accounts in this process, not in the server: forget them, so that the next module's stand-in
    # can create the same bucket, role and queues again.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _create_queues(client, names: list[str]) -> None:
    """A VPC, an IAM role and instance profile, a managed GPU compute environment, and one job queue per name."""
    ec2, iam, batch = client("ec2"), client("iam"), client("batch")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="batch", Description="batch", VpcId=vpc)["GroupId"]
    role = iam.create_role(RoleName="batch-service", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName="batch-instance")["InstanceProfile"]["Arn"]
    env = batch.create_compute_environment(
        computeEnvironmentName="gpu-spot",
        type="MANAGED",
        state="ENABLED",
        serviceRole=role,
        computeResources={
            "type": "EC2",
            "minvCpus": 0,
            "maxvCpus": 64,
            "instanceTypes": ["g4dn.2xlarge"],
            "subnets": [subnet],
            "securityGroupIds": [group],
            "instanceRole": profile,
        },
    )
    for name in names:
        batch.create_job_queue(
            jobQueueName=name,
            state="ENABLED",
            priority=1,
            computeEnvironmentOrder=[{"order": 1, "computeEnvironment": env["computeEnvironmentArn"]}],
        )


@pytest.fixture
def s3_client(aws, monkeypatch):
    """This process's Metaflow Client pointed at the stand-in (its S3 settings are read when metaflow loads)."""
    from metaflow import metaflow_config

    for key, value in aws["env"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(metaflow_config.DATATOOLS_CLIENT_PARAMS, "endpoint_url", aws["endpoint"])
    return aws["client"]("s3")


def step_functions_json(aws: dict[str, Any], flow_file: Path, profile: Path, **env: str) -> dict[str, Any]:
    """`<flow> --config config <profile> step-functions create --only-json` against the stand-in: the state machine.

    `env` overrides the settings below, e.g. Metaflow's default job queue and image, which every step without a
    `@batch` of its own gets (Step Functions runs every step on Batch)."""
    settings = {
        **os.environ,
        **aws["env"],
        "METAFLOW_SFN_IAM_ROLE": "arn:aws:iam::123456789012:role/fashionflow-sfn",
        "METAFLOW_EVENTS_SFN_ACCESS_IAM_ROLE": "arn:aws:iam::123456789012:role/fashionflow-events",
        "METAFLOW_SFN_DYNAMO_DB_TABLE": "fashionflow-foreach",
        "METAFLOW_BATCH_JOB_QUEUE": CPU_QUEUE,
        "METAFLOW_BATCH_CONTAINER_IMAGE": "fashionflow-train:0.1.0",
        # Creating the machine looks up any existing one (and its production token): at the stand-in.
        "AWS_ENDPOINT_URL_SFN": aws["endpoint"],
        "AWS_ENDPOINT_URL_EVENTBRIDGE": aws["endpoint"],
        "AWS_ENDPOINT_URL_DYNAMODB": aws["endpoint"],
        **env,
    }
    cmd = [sys.executable, str(flow_file), "--config", "config", str(profile)]
    cmd += ["step-functions", "create", "--only-json"]
    out = subprocess.run(cmd, env=settings, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{") :])


def batch_states(machine: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every Batch job state of a state machine by name, including those nested in a foreach's Map iterator."""
    found = {}
    for name, state in machine["States"].items():
        if state["Type"] == "Task" and state["Resource"].startswith("arn:aws:states:::batch:submitJob"):
            found[name] = state
        for nested in [state.get("Iterator"), state.get("ItemProcessor")]:
            if nested:
                found.update(batch_states(nested))
    return found
