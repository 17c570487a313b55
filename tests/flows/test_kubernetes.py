"""Kubernetes as the cloud engine: the profile's `compute.kubernetes` rendered by Metaflow into Argo Workflows.

`argo-workflows create --only-json` compiles a flow into the WorkflowTemplate it would deploy, without a cluster. It
needs a datastore for the code package: the S3 bucket of the local AWS stand-in (the `aws` fixture of
tests/support/aws.py, moto's server on loopback), with the METAFLOW_KUBERNETES_* and METAFLOW_ARGO_EVENTS_* settings
a deployment would have. Each flow is rendered once per module, all three side by side:

- FashionFlow with configs/kubernetes.yaml: the template validates against Argo Workflows' published JSON schema
  (tests/support/argo/); the train template, and only it, asks for the profile's GPU, CPU, memory, disk, shared
  memory, image, service account, node selector, tolerations and retries; the foreach fans the train step over
  the grid.
- PromoteFlow: its `@trigger_on_finish(flow="FashionFlow")` becomes an Argo Events Sensor listening for FashionFlow's
  end event and submitting PromoteFlow's template.
- ScoreFlow with configs/score/kubernetes.yaml: the score step alone runs in the profile's CPU pods.

A profile whose namespace is not Metaflow's is refused by Metaflow's Argo compiler (Argo runs a workflow in one
namespace); bad profiles are refused by the flow's CLI before any step runs. What only a cluster can prove: that
the pods are scheduled on the GPU nodes, pull the image and reach the datastore, and that Argo Events delivers the
event.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from shared_cloud import kubernetes_decorators, retry_decorators

from fmnist.core.config import ProfileError, expand_grid, load_profile, parse_profile
from fmnist.release.catalogue import ScoreProfileError, parse_score_profile
from tests.support.flows import CONFIGS, FLOW_FILE, ROOT

pytestmark = pytest.mark.cloud

PROMOTE_FLOW = ROOT / "flows" / "promote_flow.py"
SCORE_FLOW = ROOT / "flows" / "score_flow.py"
RENDER = ROOT / "tests" / "support" / "argo" / "render.py"
SCHEMA = ROOT / "tests" / "support" / "argo" / "schema.json"
PROFILE = CONFIGS / "kubernetes.yaml"
SCORE_PROFILE = CONFIGS / "score" / "kubernetes.yaml"
# What `metaflow configure kubernetes` would have stored: the steps without `@kubernetes` arguments of their own get
# these. Argo runs a whole workflow in one namespace, Metaflow's, so the profile's namespace must be the same.
NAMESPACE = load_profile(PROFILE).compute.kubernetes.namespace
DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_SERVICE_ACCOUNT = "metaflow-default"
EVENT = "metaflow-event"
K8S_ENV = {
    "METAFLOW_KUBERNETES_NAMESPACE": NAMESPACE,
    "METAFLOW_KUBERNETES_SERVICE_ACCOUNT": DEFAULT_SERVICE_ACCOUNT,
    "METAFLOW_KUBERNETES_CONTAINER_IMAGE": DEFAULT_IMAGE,
    "METAFLOW_ARGO_EVENTS_EVENT": EVENT,
    "METAFLOW_ARGO_EVENTS_EVENT_SOURCE": "argo-events-webhook",
    "METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT": "operate-workflow-sa",
}


# ---------------------------------------------------------------------------------------------------------------
# The renders: one per flow, side by side, once per module.


@pytest.fixture(scope="module")
def rendered(aws, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """Flow name -> {"workflowTemplate": ..., "sensor": ...} as `argo-workflows create --only-json` compiles them;
    "other namespace" -> the exit code and output of a render Metaflow refuses."""
    env = {**os.environ, **aws["env"], **K8S_ENV}
    cwd = tmp_path_factory.mktemp("argo")
    commands = {
        "FashionFlow": [str(FLOW_FILE), "--config", "config", str(PROFILE)],
        "PromoteFlow": [str(PROMOTE_FLOW)],
        "ScoreFlow": [str(SCORE_FLOW), "--config", "config", str(SCORE_PROFILE)],
    }
    # And FashionFlow once more where Metaflow's namespace is not the profile's: Argo must refuse to deploy it.
    commands["other namespace"] = commands["FashionFlow"]
    envs = {name: env for name in commands} | {"other namespace": {**env, "METAFLOW_KUBERNETES_NAMESPACE": "default"}}
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(RENDER), *args, "argo-workflows", "create", "--only-json"],
            env=envs[name],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        if name == "other namespace":
            out[name] = {"returncode": proc.returncode, "output": stdout + stderr}
            continue
        assert proc.returncode == 0, f"{name}: {stderr[-3000:]}"
        out[name] = json.loads(stdout[stdout.index("{") :])
    return out


def _containers(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Step name -> its container template (Metaflow annotates each with the step it runs)."""
    return {
        t["metadata"]["annotations"]["metaflow/step_name"]: t
        for t in template["spec"]["templates"]
        if "container" in t and "metaflow/step_name" in (t.get("metadata") or {}).get("annotations", {})
    }


def _gpu_keys(step: dict[str, Any]) -> set[str]:
    resources = step["container"]["resources"]
    return {k for part in ("limits", "requests") for k in (resources.get(part) or {}) if k.endswith("/gpu")}


# ---------------------------------------------------------------------------------------------------------------
# Argo Workflows' published schema.


def _as_the_api_server_reads_it(value: Any) -> Any:
    """The document without its nulls: Kubernetes' JSON decoding treats a null field as an unset one, and Metaflow's
    Kubernetes client objects serialise every unset field as null, which the published schema does not allow."""
    if isinstance(value, dict):
        return {k: _as_the_api_server_reads_it(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_as_the_api_server_reads_it(v) for v in value]
    return value


@pytest.fixture(scope="module")
def workflow_template_validator() -> Draft202012Validator:
    """A validator for Argo's WorkflowTemplate, from the vendored schema (tests/support/argo/README.md)."""
    schema = json.loads(SCHEMA.read_text())
    definitions = copy.deepcopy(schema["definitions"])
    # The published schema types Kubernetes' IntOrString as a string only (argoproj/argo-workflows#6060, closed as
    # wontfix); the type, and the CRD (x-kubernetes-int-or-string), take an integer too, as Metaflow writes
    # retryStrategy.limit and activeDeadlineSeconds.
    definitions["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["string", "integer"]}
    return Draft202012Validator(
        {"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.WorkflowTemplate", "definitions": definitions}
    )


@pytest.mark.parametrize("flow", ["FashionFlow", "PromoteFlow", "ScoreFlow"])
def test_workflow_template_validates_against_argos_schema(rendered, workflow_template_validator, flow):
    template = rendered[flow]["workflowTemplate"]
    assert template["kind"] == "WorkflowTemplate" and template["metadata"]["namespace"] == NAMESPACE
    errors = [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message[:200]}"
        for e in workflow_template_validator.iter_errors(_as_the_api_server_reads_it(template))
    ]
    assert not errors, "\n".join(errors[:20])


def test_the_validator_rejects_what_argo_would():
    # The schema check can fail: the wrong kind, a container without an image, a resource quantity that is no quantity.
    schema = json.loads(SCHEMA.read_text())
    validator = Draft202012Validator(
        {"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.WorkflowTemplate", "definitions": schema["definitions"]}
    )
    good = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "t"},
        "spec": {"templates": [{"name": "a", "container": {"image": "busybox"}}]},
    }
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "kind": "Workflow"})
    bad = copy.deepcopy(good)
    bad["spec"]["templates"][0]["container"] = {"command": ["true"]}
    assert [e.message for e in validator.iter_errors(bad)] == ["'image' is a required property"]
    bad["spec"]["templates"][0]["container"] = {"image": "busybox", "resources": {"limits": {"nvidia.com/gpu": {}}}}
    assert [e.message for e in validator.iter_errors(bad)] == ["{} is not of type 'string'"]


# ---------------------------------------------------------------------------------------------------------------
# FashionFlow: the train template alone asks for the profile's GPU node.


def test_train_template_alone_requests_the_profiles_gpu(rendered):
    kube = load_profile(PROFILE).compute.kubernetes
    steps = _containers(rendered["FashionFlow"]["workflowTemplate"])
    assert set(steps) == {"start", "load", "train", "join", "evaluate", "end"}

    train = steps["train"]
    resources = train["container"]["resources"]
    assert resources["limits"] == {f"{kube.gpu_vendor}.com/gpu": str(kube.gpu)}  # nvidia.com/gpu: "1"
    assert resources["requests"] == {
        "cpu": str(kube.cpu),
        "memory": f"{kube.memory}M",
        "ephemeral-storage": f"{kube.disk}M",
    }
    assert train["container"]["image"] == kube.image
    assert train["serviceAccountName"] == kube.service_account
    assert train["nodeSelector"] == kube.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert train["tolerations"] == kube.tolerations
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in train["tolerations"]
    assert train["retryStrategy"]["limit"] == kube.retries
    shm = {v["name"]: v for v in train["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in train["container"]["volumeMounts"]}
    assert shm[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{kube.shared_memory}Mi"}
    assert "step train" in " ".join(train["container"]["args"] or train["container"]["command"])

    for name, step in steps.items():
        if name == "train":
            continue
        # Metaflow's configured defaults, no GPU, no GPU node, no retries.
        assert not _gpu_keys(step), name
        assert step["container"]["image"] == DEFAULT_IMAGE, name
        assert step["serviceAccountName"] == DEFAULT_SERVICE_ACCOUNT, name
        assert not step.get("nodeSelector") and not step.get("tolerations"), name
        assert "retryStrategy" not in step, name
    # Nor do Metaflow's own hook templates (error capture, exit hooks) ask for one.
    for template in rendered["FashionFlow"]["workflowTemplate"]["spec"]["templates"]:
        if "container" in template and template is not train:
            assert not _gpu_keys(template), template["name"]


def test_foreach_fans_train_over_the_grid(rendered):
    templates = {t["name"]: t for t in rendered["FashionFlow"]["workflowTemplate"]["spec"]["templates"]}
    # Metaflow names the foreach's inner DAG `<step>-foreach-<artifact>`: load's `foreach="grid"`.
    (fan,) = [t for t in templates if "-foreach-" in t]
    assert fan == "load-foreach-grid"
    assert [task["template"] for task in templates[fan]["dag"]["tasks"]] == ["train"]
    (outer,) = [task for task in templates["FashionFlow"]["dag"]["tasks"] if task["template"] == fan]
    # One train task per split that load reports at run time: len(self.grid), the profile's expanded grid.
    assert outer["withParam"] == "{{tasks.load.outputs.parameters.num-splits}}"
    assert "num-splits" in {p["name"] for p in templates["load"]["outputs"]["parameters"]}
    assert len(expand_grid(load_profile(PROFILE))) == 4
    graph = json.loads(rendered["FashionFlow"]["workflowTemplate"]["metadata"]["annotations"]["metaflow/dag"])
    assert graph["graph_structure"] == ["start", "load", [["train"]], "join", "evaluate", "end"]


def test_argo_refuses_a_profile_namespace_other_than_metaflows(rendered):
    # Argo runs a whole workflow in Metaflow's namespace: the profile's must be the same (see
    # docs/cloud.md#kubernetes-and-argo-workflows).
    refused = rendered["other namespace"]
    assert refused["returncode"] != 0
    assert (
        "Multi-namespace Kubernetes execution of flows in Argo Workflows is not currently supported"
        in (refused["output"])
    )


# ---------------------------------------------------------------------------------------------------------------
# PromoteFlow: the Argo Events Sensor of `@trigger_on_finish(flow="FashionFlow")`.


def test_promote_flow_is_triggered_by_fashionflows_end(rendered):
    template = rendered["PromoteFlow"]["workflowTemplate"]
    annotations = template["metadata"]["annotations"]
    assert json.loads(annotations["metaflow/triggers"]) == [{"name": "metaflow.FashionFlow.end", "type": "run"}]

    sensor = rendered["PromoteFlow"]["sensor"]
    assert sensor["kind"] == "Sensor" and sensor["metadata"]["name"] == annotations["metaflow/sensor_name"]
    (dependency,) = sensor["spec"]["dependencies"]
    assert (dependency["eventName"], dependency["eventSourceName"]) == (EVENT, "argo-events-webhook")
    # Only the end of a FashionFlow run, as Metaflow's own event (not a user's event of the same name).
    exprs = {e["fields"][0]["path"]: e["expr"] for e in dependency["filters"]["exprs"]}
    assert exprs["body.payload.name"] == "name == 'metaflow.FashionFlow.end'"
    assert exprs["body.payload.auto-generated-by-metaflow"] == "field == 'True'"
    (trigger,) = sensor["spec"]["triggers"]
    k8s = trigger["template"]["k8s"]
    assert k8s["operation"] == "create"
    submitted = k8s["source"]["resource"]
    assert submitted["kind"] == "Workflow" and submitted["metadata"]["namespace"] == NAMESPACE
    assert submitted["spec"]["workflowTemplateRef"]["name"] == template["metadata"]["name"]
    # The finished run reaches the gate: the event's payload becomes a parameter of the submitted workflow, which
    # PromoteFlow reads as `current.trigger` to pick its candidate.
    (parameter,) = k8s["parameters"]
    assert parameter["src"] == {**parameter["src"], "dependencyName": dependency["name"], "dataKey": "body.payload"}
    assert parameter["dest"] == f"spec.arguments.parameters.#(name={dependency['name']}).value"
    # PromoteFlow itself needs no GPU.
    assert not any(_gpu_keys(step) for step in _containers(template).values())


# ---------------------------------------------------------------------------------------------------------------
# ScoreFlow: the score step alone in the profile's CPU pods.


def test_score_step_alone_runs_in_the_profiles_pods(rendered):
    kube = parse_score_profile(SCORE_PROFILE.read_text())["compute"]["kubernetes"]
    steps = _containers(rendered["ScoreFlow"]["workflowTemplate"])
    score = steps.pop("score")
    assert not _gpu_keys(score)  # `gpu: 0`: a CPU pod, with no GPU resource at all
    assert score["container"]["resources"]["requests"]["cpu"] == str(kube["cpu"])
    assert score["container"]["resources"]["requests"]["memory"] == f"{kube['memory']}M"
    assert score["container"]["image"] == kube["image"]
    assert score["retryStrategy"]["limit"] == kube["retries"]
    for name, step in steps.items():
        assert step["container"]["image"] == DEFAULT_IMAGE and "retryStrategy" not in step, name


# ---------------------------------------------------------------------------------------------------------------
# The profile: what the mutator adds, and what is refused.


def test_kubernetes_decorators_come_from_the_profile_alone():
    compute = load_profile(PROFILE).compute.model_dump()
    (kube, kube_args), (retry, retry_args) = retry_decorators(compute)
    assert (kube, retry) == ("kubernetes", "retry")
    assert kube_args["gpu"] == 1 and kube_args["gpu_vendor"] == "nvidia"
    assert (kube_args["cpu"], kube_args["memory"], kube_args["disk"]) == ("6", "24000", "20480")
    assert kube_args["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert retry_args == {"times": 3}
    # Unset fields are left to Metaflow's configuration; a CPU pod carries no GPU arguments.
    args = kubernetes_decorators({"gpu": 0, "gpu_vendor": "nvidia", "cpu": 2, "image": None, "node_selector": {}})[0][1]
    assert args == {"cpu": "2"}
    assert kubernetes_decorators(None) == []


BAD_PROFILES = {
    "both engines": (
        {"compute": {"batch": {"gpu": 1}, "kubernetes": {"gpu": 1}}},
        ["compute.batch", "compute.kubernetes"],
    ),
    "negative gpu": ({"compute": {"kubernetes": {"gpu": -1}}}, ["compute.kubernetes.gpu"]),
    "unknown vendor": ({"compute": {"kubernetes": {"gpu_vendor": "intel"}}}, ["compute.kubernetes.gpu_vendor"]),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_bad_kubernetes_profiles_are_refused_with_the_field(case):
    raw, fields = BAD_PROFILES[case]
    with pytest.raises(ProfileError) as err:
        parse_profile(yaml.safe_dump(raw))
    assert all(field in str(err.value) for field in fields), str(err.value)
    # ScoreFlow's profile shares the compute classes, and the refusal.
    with pytest.raises(ScoreProfileError) as score_err:
        parse_score_profile(yaml.safe_dump(raw))
    assert all(field in str(score_err.value) for field in fields), str(score_err.value)


def test_bad_profiles_stop_the_flow_before_any_step(tmp_path):
    """The flow's CLI refuses each bad profile when Metaflow reads its configs: no run starts."""
    procs = {}
    for n, (case, (raw, _)) in enumerate(BAD_PROFILES.items()):
        path = tmp_path / f"bad{n}.yaml"
        path.write_text(yaml.safe_dump(raw))
        procs[case] = subprocess.Popen(
            [sys.executable, str(FLOW_FILE), "--config", "config", str(path), "run"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        output = stdout + stderr
        assert proc.returncode != 0, case
        assert all(field in output for field in BAD_PROFILES[case][1]), output[-2000:]
        assert "Workflow starting" not in output and "Task is starting" not in output, case


def test_profile_examples_share_the_batch_profiles_model_and_grid():
    kube, batch = load_profile(PROFILE), load_profile(CONFIGS / "batch.yaml")
    assert kube.hparams == batch.hparams and kube.grid == batch.grid
    assert kube.compute.batch is None and kube.compute.kubernetes is not None
    assert Path(SCORE_PROFILE).is_file()
