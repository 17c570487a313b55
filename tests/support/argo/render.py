"""Run a flow file's CLI as `python <flow> ...` would, printing the Argo Events Sensor next to the WorkflowTemplate.

    python tests/support/argo/render.py flows/promote_flow.py argo-workflows create --only-json

`argo-workflows create --only-json` prints only the WorkflowTemplate (Metaflow 2.19 leaves the Sensor out), while
`create` proper would send both to a cluster. This prints the one JSON document
`{"workflowTemplate": ..., "sensor": ... or null}` instead, both compiled by Metaflow's own `ArgoWorkflows`, which
already holds the Sensor it built from `@trigger_on_finish`: nothing else of Metaflow is changed.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


def _both(flow) -> str:
    sensor = flow._sensor.to_json() if flow._sensor else None
    return json.dumps({"workflowTemplate": flow._workflow_template.to_json(), "sensor": sensor})


def main(argv: list[str]) -> None:
    """Run the flow file `argv[0]` with the CLI arguments `argv[1:]`, as its `__main__`."""
    from metaflow.plugins.argo.argo_workflows import ArgoWorkflows

    ArgoWorkflows.__str__ = _both  # type: ignore[method-assign]
    flow_file = Path(argv[0]).resolve()
    sys.argv = [str(flow_file), *argv[1:]]
    sys.path.insert(0, str(flow_file.parent))  # as `python <flow>` puts the flow's folder first
    runpy.run_path(str(flow_file), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
