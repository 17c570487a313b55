"""The commands the flows' end steps print, written so that each works pasted into the shell that started the run.

A card is fetched with Metaflow's own `card get <run-id>/<step> FILE` (the card commands take the run id and the
step, not the flow-qualified pathspec), by the interpreter that ran the flow, as the user the run was recorded
under: `make run` sets USERNAME for its child only, so a shell without $USER would otherwise be refused ("could
not determine your user name") or look in another user's namespace. Where the run was started from the
repository root, `make card` does the same and says where it wrote the file.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

# `make card FLOW=...` names each flow by its file's prefix (flows/<prefix>_flow.py).
MAKE_FLOW = {"FashionFlow": "fashion", "PromoteFlow": "promote", "ScoreFlow": "score"}


def _shell_path(path: str | Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute; quoted for a shell. Symlinks
    are kept: a virtual environment's python is a link that must stay the environment's."""
    absolute = Path(os.path.abspath(path))
    try:
        return shlex.quote(str(absolute.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(absolute))


def card_file(flow: str, run_id: str, step: str) -> str:
    """The file a card is written to: `<Flow>-<run id>-<step>.html`."""
    return f"{flow}-{run_id}-{step}.html"


def card_commands(flow_file: str, flow: str, run_id: str, step: str, user: str) -> list[str]:
    """Shell commands that write the card of `flow`'s `run_id`/`step` to an HTML file: `make card` (when the run
    started from the repository root) and Metaflow's own `card get`."""
    commands = []
    if Path("Makefile").is_file() and Path("flows", Path(flow_file).name).is_file() and flow in MAKE_FLOW:
        commands.append(f"make card FLOW={MAKE_FLOW[flow]} RUN={run_id} STEP={step}")
    commands.append(
        f"USERNAME={shlex.quote(user)} {_shell_path(sys.executable)} {_shell_path(flow_file)} "
        f"card get {run_id}/{step} {card_file(flow, run_id, step)}"
    )
    return commands


def card_hint(label: str, flow_file: str, flow: str, run_id: str, step: str, user: str) -> list[str]:
    """Lines for the end step to print: the label with the first command, then the alternative."""
    first, *others = card_commands(flow_file, flow, run_id, step, user)
    return [f"{label}: {first}"] + [f"  or: {command}" for command in others]
