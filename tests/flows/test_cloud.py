"""The cloud set-up against a local AWS stand-in: moto's server mode on loopback, for S3, AWS Batch and IAM/EC2.

The stand-in is the `aws` and `s3_client` fixtures of tests/support/aws.py.

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
import re
import tarfile
from pathlib import Path

import pytest
import torch  # noqa: F401 - before metaflow: torch fails to import once metaflow's vendored typing_extensions is loaded
import yaml
from fashion_checkpoints import checkpoint_key
from shared_cloud import batch_decorators, package_files, retry_decorators

import fmnist
import registry
from fmnist.core.config import load_profile
from tests.support.aws import BUCKET, CPU_QUEUE, JOB_ROLE, SYSROOT, batch_states, step_functions_json
from tests.support.flows import CONFIGS, FLOW_FILE, ROOT, resume_flow, run_flow

pytestmark = pytest.mark.cloud

# ---------------------------------------------------------------------------------------------------------------
# Helpers: the flow run against the stand-in (fixtures `aws`, `s3_client` from tests/support/aws.py).


def _run(env: dict[str, str], profile: Path, **options):
    """Run the flow from this process's directory (its datastore is the stand-in's S3): status, run and output."""
    result = run_flow(profile, env=env, cwd=Path.cwd(), **options)
    return result.status, result.run, result.stdout + result.stderr


def _resume(env: dict[str, str], run_id: str, **options):
    result = resume_flow(run_id, env=env, cwd=Path.cwd(), **options)
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


def test_local_retries_come_from_the_profile_and_batch_keeps_its_own():
    assert retry_decorators({"retries": 0}) == []
    assert retry_decorators({"retries": 2}) == [("retry", {"times": 2})]
    batch = load_profile(CONFIGS / "batch.yaml").compute
    assert dict(retry_decorators(batch.model_dump()))["retry"] == {"times": batch.batch.retries}


def test_code_package_lists_fmnist_sources():
    shipped = dict(package_files(Path(fmnist.__file__).parent))
    assert set(shipped.values()) >= {"fmnist/__init__.py", "fmnist/core/config.py", "fmnist/training/loop.py"}
    assert set(dict(package_files(Path(registry.__file__).parent)).values()) >= {"registry/runs.py"}
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

    # The train step carries the profile's retries (a reclaimed spot instance resumes the trial), and each trial's
    # checkpoint lives where the datastore lives: in the bucket, next to the task's own files.
    decorators = {d["name"]: d for d in run["start"].task["_graph_info"].data["steps"]["train"]["decorators"]}
    assert {"batch", "retry"} <= set(decorators)
    assert int(decorators["retry"]["attributes"]["times"]) == profile.retries
    for task in run["train"]:
        key = f"metaflow/{checkpoint_key('FashionFlow', run.id, 'train', task.id)}"
        assert key in _keys(s3_client, key), f"no checkpoint of {task.pathspec} in the bucket"

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
        assert "fashion_flow.py" in members and "shared_cloud.py" in members
    # Unpacked next to the flow file in the container's working directory: first on the task's sys.path.
    assert (ran[0]["cwd"] / "metaflow" / "fmnist" / "training" / "loop.py").is_file()
    assert (ran[0]["cwd"] / "metaflow" / "registry" / "runs.py").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Step Functions: the compiled state machine.


def test_step_functions_json_asks_a_gpu_for_train_only(aws, s3_client):
    machine = step_functions_json(aws, FLOW_FILE, CONFIGS / "batch.yaml")
    states = batch_states(machine)
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
    assert train["FROM"].startswith("python:3.11")  # torch and its CUDA libraries come from the lock, not the base
    assert any(i == "RUN" and "--constraint requirements/lock.txt" in a for i, a in stages["train"])
    copied = {word for i, a in stages["train"] if i == "COPY" for word in a.split()}
    assert {"fmnist/", "serving/", "registry/", "pyproject.toml", "requirements/"} <= copied
    assert "METAFLOW_SKIP_INSTALL_DEPENDENCIES=1" in train["ENV"]

    serve = stages["serve"]
    instructions = [i for i, _ in serve]
    assert "slim" in dict(serve)["FROM"]
    assert any(i == "RUN" and "download.pytorch.org/whl/cpu" in a for i, a in serve)  # CPU wheels only
    assert any(i == "RUN" and '"fashionflow[serve]"' in a and "requirements/lock.txt" in a for i, a in serve)
    user = dict(serve)["USER"]
    assert user not in {"root", "0"} and any(i == "RUN" and "useradd" in a and user in a for i, a in serve)
    # Nothing is installed after the switch away from root.
    assert instructions.index("USER") > max(n for n, (i, _) in enumerate(serve) if i == "RUN")
    assert json.loads(dict(serve)["CMD"]) == ["fmnist-serve", "--host", "0.0.0.0", "--port", "8000"]


def test_dockerignore_lets_in_only_what_the_images_need():
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!fmnist/", "!serving/", "!registry/"} <= set(lines)
