"""Card pieces more than one flow shows: FashionFlow's report card and ScoreFlow's join card both say where a model
came from."""

from __future__ import annotations

from typing import Any

from metaflow.cards import Table


def provenance_table(provenance: dict[str, Any]) -> Table:
    """Key/value table of where the model came from; nested dicts (library versions, hparams) flattened."""
    rows = []
    for key, value in provenance.items():
        if isinstance(value, dict):
            rows += [[f"{key}.{k}", str(v)] for k, v in sorted(value.items())]
        else:
            rows.append([key, str(value)])
    return Table(rows, headers=["field", "value"])
