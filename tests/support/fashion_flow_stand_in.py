"""A stand-in FashionFlow for the live-reload tests: a run of a flow named FashionFlow whose end step holds whatever
model record the test hands it (a good one, a corrupt one, or none at all), in seconds instead of a training run.

python tests/support/fashion_flow_stand_in.py run --record /path/to/bytes     # `calibrated_model` = the file's bytes
python tests/support/fashion_flow_stand_in.py run                             # no `calibrated_model` artifact

The tests run it in a private datastore, so its runs never become the session's "latest successful FashionFlow run".
"""

from __future__ import annotations

from pathlib import Path

from metaflow import FlowSpec, Parameter, step


class FashionFlow(FlowSpec):
    """Stands in for the real flow: start, then end with the given bytes as the model record."""

    record = Parameter("record", default="", help="File whose bytes become `calibrated_model`; empty: no artifact.")

    @step
    def start(self):
        """Nothing to train."""
        self.next(self.end)

    @step
    def end(self):
        """Store the record's bytes as the served artifact, when there is one."""
        if self.record:
            self.calibrated_model = Path(str(self.record)).read_bytes()


if __name__ == "__main__":
    FashionFlow()
