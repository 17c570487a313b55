"""The cloud set-up against a local AWS stand-in: moto's server mode on loopback, for S3, AWS Batch and IAM/EC2.

- The smoke profile on the S3 datastore: artifacts land in the bucket, the Client API reads them back, and
  `resume` of a failed trial works against S3 too.
- The batch profile (shrunk to smoke size) submitted to moto's Batch: only the trials (train tasks) become Batch jobs,
  with the profile's GPU, CPU, memory, shared memory, image and queue and a command that runs this flow's train
  step. moto's Docker-free Batch backend is used; here it runs each job's command as a local process (a stand-in
  container whose PYTHONPATH puts a stale `fmnist` ahead of the installed one, as an outdated image would), so
  the jobs really download Metaflow's code package from S3 and train, and the run finishes.
- `step-functions create --only-json` for the batch profile: the train state asks for a GPU, the others do not.
- The Dockerfile's two targets, parsed.

Select with `pytest -m cloud`; they run by default.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch  # noqa: F401 - before metaflow: torch fails to import once metaflow's vendored typing_extensions is loaded
import yaml

pytestmark = pytest.mark.cloud

ROOT = Path(__file__).resolve().parent.parent
FLOW_FILE = ROOT / "flows" / "fashion_flow.py"
CONFIGS = ROOT / "configs"
REGION = "us-east-1"
BUCKET = "fashionflow-test"
SYSROOT = f"s3://{BUCKET}/metaflow"
CPU_QUEUE = "fashionflow-cpu"  # Step Functions runs the other steps on Batch too, from Metaflow's default queue
JOB_ROLE = "arn:aws:iam::123456789012:role/fashionflow-batch"

sys.path.insert(0, str(ROOT / "flows"))
from fashion_cloud import batch_decorators, package_files  # noqa: E402

import fmnist  # noqa: E402
from fmnist.config import load_profile  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# The stand-in: moto on loopback, with a Batch backend that runs jobs as local processes.


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
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _create_queues(client, names: list[str]) -> None:
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


def _run(env: dict[str, str], profile: Path, **options):
    from metaflow import Runner

    with Runner(str(FLOW_FILE), show_output=False, env=env, config=[("config", str(profile))]) as runner:
        result = runner.run(**options)
        return result.status, result.run, result.stdout + result.stderr


def _resume(env: dict[str, str], run_id: str, **options):
    from metaflow import Runner

    with Runner(str(FLOW_FILE), show_output=False, env=env) as runner:
        result = runner.resume(origin_run_id=run_id, **options)
        return result.status, result.run, result.stdout + result.stderr


def _keys(s3, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _batch_smoke_profile(path: Path) -> Path:
    """The smoke profile's data and sweep with the batch profile's compute: a Batch run of smoke size."""
    smoke = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    batch = yaml.safe_load((CONFIGS / "batch.yaml").read_text())
    path.write_text(yaml.safe_dump({**smoke, "name": "batch-smoke", "compute": batch["compute"]}))
    return path


# ---------------------------------------------------------------------------------------------------------------
# The mutator's decision, without Metaflow running anything.


def test_only_the_batch_profile_asks_for_batch():
    for profile_path in sorted(CONFIGS.glob("*.yaml")):
        batch = load_profile(profile_path).compute.batch
        if profile_path.name == "batch.yaml":
            assert batch is not None and batch.gpu >= 1 and batch.image and batch.queue
        else:
            assert batch is None, f"{profile_path.name} must run without AWS"
            assert batch_decorators(None) == []


def test_batch_section_becomes_batch_and_retry_decorators():
    batch = load_profile(CONFIGS / "batch.yaml").compute.batch.model_dump()
    decorators = dict(batch_decorators(batch))
    assert decorators["batch"] == {k: batch[k] for k in ["gpu", "cpu", "memory", "shared_memory", "image", "queue"]}
    assert decorators["retry"] == {"times": batch["retries"]}
    # Unset image/queue fall back to Metaflow's configured defaults instead of being passed as None.
    assert "image" not in dict(batch_decorators({**batch, "image": None, "queue": None}))["batch"]


def test_code_package_lists_fmnist_sources():
    shipped = dict(package_files(Path(fmnist.__file__).parent))
    assert set(shipped.values()) >= {"fmnist/__init__.py", "fmnist/config.py", "fmnist/train.py"}
    assert all("__pycache__" not in path for path in shipped)


# ---------------------------------------------------------------------------------------------------------------
# S3 datastore: run, read back, resume.


def test_smoke_run_on_s3_fails_then_resumes(aws, s3_client):
    env = {**aws["env"], "FASHIONFLOW_FAIL_TRIALS": "1"}
    status, failed, output = _run(env, CONFIGS / "smoke.yaml", max_workers=1)
    assert status == "failed" and "trial 1 failed on purpose" in output

    status, run, output = _resume(aws["env"], failed.id, max_workers=1)
    assert status == "successful", output[-3000:]

    # Artifacts and the code-free data live in the bucket, under the configured root.
    keys = _keys(s3_client, f"metaflow/FashionFlow/{run.id}/")
    assert any("/train/" in k for k in keys) and any("/evaluate/" in k for k in keys)
    assert _keys(s3_client, "metaflow/FashionFlow/data/")  # content-addressed artifact blobs

    # The Client API reads them back from S3.
    assert run.successful and run.data.config["name"] == "smoke"
    assert 0.3 < run.data.test_accuracy <= 1.0
    train = {t["trial_index"].data: t for t in run["train"]}
    assert set(train) == {0, 1}
    assert train[0].origin_pathspec and train[0].origin_pathspec.startswith(f"FashionFlow/{failed.id}/train/")
    assert train[1].origin_pathspec is None  # the failed trial was trained again
    assert train[1]["trained_model"].data


# ---------------------------------------------------------------------------------------------------------------
# AWS Batch: the batch profile's trials become Batch jobs.


def test_batch_profile_sends_only_trials_to_batch(aws, s3_client, tmp_path):
    profile = load_profile(CONFIGS / "batch.yaml").compute.batch
    fmnist_dir = Path(fmnist.__file__).resolve().parent
    aws["fmnist_at_launch"] = {arcname: Path(path).read_bytes() for path, arcname in package_files(fmnist_dir)}
    status, run, output = _run(aws["env"], _batch_smoke_profile(tmp_path / "batch-smoke.yaml"))
    ran = aws["containers"].jobs
    assert status == "successful", output[-3000:] + "".join(j["output"][-2000:] for j in ran)

    batch = aws["client"]("batch")
    # `ran` holds every job the stand-in received: one per trial of the smoke grid, and nothing else.
    jobs = batch.describe_jobs(jobs=[j["id"] for j in ran])["jobs"]
    assert len(jobs) == 2
    queue_arn = batch.describe_job_queues(jobQueues=[profile.queue])["jobQueues"][0]["jobQueueArn"]
    train_tasks = {t.pathspec.split("/")[-1] for t in run["train"]}
    for job in jobs:
        assert job["status"] == "SUCCEEDED" and job["jobQueue"] == queue_arn
        assert job["parameters"]["metaflow.step_name"] == "train"
        assert job["parameters"]["metaflow.run_id"] == run.id
        assert job["parameters"]["metaflow.task_id"] in train_tasks

        definition = batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]
        container = definition["containerProperties"]
        assert container["image"] == profile.image
        assert container["jobRoleArn"] == JOB_ROLE
        assert container["linuxParameters"]["sharedMemorySize"] == profile.shared_memory

        # The command runs this flow's train step, in this run, against this datastore.
        command = job["container"]["command"]
        script = command[-1]
        assert command[:2] == ["bash", "-c"]
        assert re.search(rf"python -u fashion_flow\.py .* step train .*--run-id[= ]{run.id}\b", script), script
        env = {e["name"]: e["value"] for e in job["container"]["environment"]}
        assert env["METAFLOW_S3_ENDPOINT_URL"] == aws["endpoint"]
        assert env["METAFLOW_DATASTORE_SYSROOT_S3"] == SYSROOT
    # GPUs, vCPUs and memory travel in each submission's container overrides.
    for submitted in ran:
        resources = {r["type"]: r["value"] for r in submitted["overrides"]["resourceRequirements"]}
        assert resources == {"GPU": str(profile.gpu), "VCPU": str(profile.cpu), "MEMORY": str(profile.memory)}

    # The trials ran in the stand-in containers and the Client sees their results; the rest stayed local.
    for task in run["train"]:
        assert "aws-batch-job-id" in task.metadata_dict
    for step in ["start", "load", "join", "evaluate", "end"]:
        assert "aws-batch-job-id" not in run[step].task.metadata_dict, step
    assert 0.3 < run.data.test_accuracy <= 1.0


def test_batch_tasks_import_fmnist_from_the_code_package(aws, s3_client):
    """The containers put a stale `fmnist` on PYTHONPATH; the tasks passed, so they imported the packaged one."""
    ran = aws["containers"].jobs
    if not ran:
        pytest.skip("needs the Batch run above")
    assert all(j["returncode"] == 0 for j in ran)
    job = aws["client"]("batch").describe_jobs(jobs=[ran[0]["id"]])["jobs"][0]
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    bucket, key = env["METAFLOW_CODE_URL"].removeprefix("s3://").split("/", 1)
    package = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(package)) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for arcname, source in aws["fmnist_at_launch"].items():  # the launching code, byte for byte
            assert arcname in members, f"{arcname} missing from the code package"
            assert tar.extractfile(members[arcname]).read() == source, arcname
        assert "fashion_flow.py" in members and "fashion_cloud.py" in members
    # Unpacked next to the flow file in the container's working directory: first on the task's sys.path.
    assert (ran[0]["cwd"] / "metaflow" / "fmnist" / "train.py").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Step Functions: the compiled state machine.


def test_step_functions_json_asks_a_gpu_for_train_only(aws, s3_client):
    env = {
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
    }
    cmd = [
        sys.executable,
        str(FLOW_FILE),
        "--config",
        "config",
        str(CONFIGS / "batch.yaml"),
        "step-functions",
        "create",
        "--only-json",
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    machine = json.loads(out.stdout[out.stdout.index("{") :])
    states = _batch_states(machine)
    assert set(states) == {"start", "load", "train", "join", "evaluate", "end"}
    profile = load_profile(CONFIGS / "batch.yaml").compute.batch
    batch = aws["client"]("batch")
    for name, state in states.items():
        params = state["Parameters"]
        resources = {r["Type"]: r["Value"] for r in params["ContainerOverrides"]["ResourceRequirements"]}
        definition = batch.describe_job_definitions(jobDefinitions=[params["JobDefinition"]])["jobDefinitions"][0]
        if name == "train":
            assert resources == {"GPU": str(profile.gpu), "VCPU": str(profile.cpu), "MEMORY": str(profile.memory)}
            assert params["JobQueue"] == profile.queue
            assert definition["containerProperties"]["image"] == profile.image
            assert params["RetryStrategy"]["Attempts"] == profile.retries + 1
            assert "step train" in params["ContainerOverrides"]["Command"][-1]
        else:
            assert "GPU" not in resources, name
            assert params["JobQueue"] == CPU_QUEUE, name
            assert definition["containerProperties"]["image"] == "fashionflow-train:0.1.0", name


def _batch_states(machine: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every Batch job state by name, including those nested in the foreach's Map iterator."""
    found = {}
    for name, state in machine["States"].items():
        if state["Type"] == "Task" and state["Resource"].startswith("arn:aws:states:::batch:submitJob"):
            found[name] = state
        for nested in [state.get("Iterator"), state.get("ItemProcessor")]:
            if nested:
                found.update(_batch_states(nested))
    return found


# ---------------------------------------------------------------------------------------------------------------
# The Dockerfile, parsed: no Docker engine runs here.


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name -> [(instruction, arguments)], with continuation lines joined and comments dropped."""
    logical = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", logical, flags=re.M))
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in logical.splitlines():
        if not line.strip():
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            image, _, name = rest.partition(" AS ")
            current = name.strip()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            stages[current] = [("FROM", image)]
        elif current:
            stages[current].append((instruction.upper(), rest.strip()))
    return stages


def test_dockerfile_has_train_and_serve_targets():
    stages = _stages((ROOT / "Dockerfile").read_text())
    assert set(stages) == {"train", "serve"}

    train = dict(stages["train"])
    base = train["FROM"]
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and base.endswith("-runtime")
    assert any(i == "RUN" and "pip install ." in a for i, a in stages["train"])
    copied = {word for i, a in stages["train"] if i == "COPY" for word in a.split()}
    assert {"fmnist/", "serving/", "pyproject.toml"} <= copied
    assert "METAFLOW_SKIP_INSTALL_DEPENDENCIES=1" in train["ENV"]

    serve = stages["serve"]
    instructions = [i for i, _ in serve]
    assert "slim" in dict(serve)["FROM"]
    assert any(i == "RUN" and "download.pytorch.org/whl/cpu" in a for i, a in serve)  # CPU wheels only
    assert any(i == "RUN" and '".[serve]"' in a for i, a in serve)
    user = dict(serve)["USER"]
    assert user not in {"root", "0"} and any(i == "RUN" and "useradd" in a and user in a for i, a in serve)
    # Nothing is installed after the switch away from root.
    assert instructions.index("USER") > max(n for n, (i, _) in enumerate(serve) if i == "RUN")
    assert json.loads(dict(serve)["CMD"]) == ["uvicorn", "serving.app:app", "--host", "0.0.0.0", "--port", "8000"]


def test_dockerignore_lets_in_only_what_the_images_need():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!fmnist/", "!serving/"} <= set(lines)
