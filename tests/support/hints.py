"""What the flows print for their users to type, run as printed: the card commands of an end step's output."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

# "report card: <command>", "card: <command>", then "  or: <command>" for each alternative; in a Runner's output each
# line follows Metaflow's "<time> [<task> (pid <n>)] " prefix.
_HINT = re.compile(r"(?:^|\)\] )(?:[a-z]+ )?(?:card|  or): (?P<command>.+)$", re.MULTILINE)


def printed_card_commands(stdout: str) -> list[str]:
    """Every card command an end step printed, in order."""
    return [m.group("command").strip() for m in _HINT.finditer(stdout)]


def shell_without_user() -> dict[str, str]:
    """The environment of a shell in a container or CI runner: no $USER, no USERNAME, no METAFLOW_USER."""
    return {k: v for k, v in os.environ.items() if k not in {"USER", "USERNAME", "LOGNAME", "METAFLOW_USER"}}


def run_as_printed(command: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`command` pasted into a shell at `cwd` (`card view` typed as `card get`: no browser here)."""
    return subprocess.run(
        ["bash", "-c", command.replace(" card view ", " card get ")],
        cwd=cwd,
        env=shell_without_user(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def card_markdown(html: str) -> str:
    """The text of a card file's components (Metaflow embeds them base64-encoded in the page)."""
    data = re.search(r'window\.__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', html)
    assert data, "not a Metaflow card: no card data in the file"
    return base64.b64decode(data.group(1)).decode()


def check_card_commands(stdout: str, cwd: Path, expected: dict[str, str]) -> list[str]:
    """Run every printed card command at `cwd`; each must write its `<Flow>-<run>-<step>.html` file (`make card`:
    under cards/) whose card holds `expected[step]`. Returns the commands run."""
    commands = printed_card_commands(stdout)
    assert commands, f"no card command printed:\n{stdout[-2000:]}"
    for command in commands:
        made = re.match(r"make card FLOW=(\w+) RUN=(\d+) STEP=(\w+)$", command)
        target = re.search(r"(\S+-(\d+)-(\w+)\.html)$", command)
        assert made or target, f"the command names no card file: {command}"
        if made:
            flow = {"fashion": "FashionFlow", "promote": "PromoteFlow", "score": "ScoreFlow"}[made.group(1)]
            path, step = cwd / "cards" / f"{flow}-{made.group(2)}-{made.group(3)}.html", made.group(3)
        else:
            path, step = cwd / target.group(1), target.group(3)
        path.unlink(missing_ok=True)
        result = run_as_printed(command, cwd)
        assert result.returncode == 0, f"{command}\n{result.stdout[-1500:]}{result.stderr[-1500:]}"
        assert path.is_file(), f"{command} wrote no {path}"
        assert expected[step] in card_markdown(path.read_text()), command
    return commands
