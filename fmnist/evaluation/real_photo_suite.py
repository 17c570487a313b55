"""The real-photograph suite: labelled phone photos (`fmnist.core.real_photos`) through the service's own path.

Per upstream folder: accuracy (the exact class where Fashion-MNIST has it, the garment family otherwise), the share
confident of the class (`Decision.class_confident`) and the accuracy of those answers (by family, the question a
shopper asks first), and the same for the confident answers, sure of the family at least (`Decision.confident`: of
the class, or of the family alone; the `family_sure` figures); for the
garments without a class (hats, shorts, skirts), the share marked unsure (sure of neither), the only honest answer;
and for every folder the share declined as unlike the training images (the OOD check, before any confidence).
Totals over the garments with a class are pooled over photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fmnist.core.real_photos import LABELS, RealPhoto
from fmnist.evaluation.answers import Answers


def _share(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def real_photo_table(classify: Callable[[Sequence[bytes]], Answers], photos: Sequence[RealPhoto]) -> dict[str, Any]:
    """Answers to `photos` as the report's table: one row per folder, totals, and the indices of the worst photos
    (wrong and confident first, then wrong and unsure; the grid shows them)."""
    answers = classify([p.data for p in photos])
    labels, confident = answers.labels, answers.confident.astype(bool)
    family_sure = answers.sure
    unlike = answers.unlike if answers.unlike is not None else np.zeros(len(labels), dtype=bool)
    family_right = np.array([int(label) in p.right_classes for label, p in zip(labels, photos, strict=True)])
    exact_right = np.array([p.exact is not None and int(y) == p.exact for y, p in zip(labels, photos, strict=True)])
    has_class = np.array([p.family is not None for p in photos], dtype=bool)
    folders = np.array([p.folder for p in photos])
    rows = []
    for folder in LABELS:
        m = folders == folder
        if not m.any():
            continue
        exact, family = LABELS[folder]
        right = exact_right[m] if exact is not None else family_right[m]
        rows.append(
            {
                "folder": folder,
                "count": int(m.sum()),
                "judged_by": "exact" if exact is not None else (f"family:{family}" if family else "unsure"),
                "accuracy": _share(right) if family else None,
                "family_accuracy": _share(family_right[m]) if family else None,
                "confident": _share(confident[m]),
                "confident_family_accuracy": _share(family_right[m & confident]) if family else None,
                "family_sure": _share(family_sure[m]),
                "family_sure_accuracy": _share(family_right[m & family_sure]) if family else None,
                "unsure": _share(~family_sure[m]),
                "unlike": _share(unlike[m]),
            }
        )
    garments = has_class
    with_exact = np.array([p.exact is not None for p in photos], dtype=bool)
    wrong = ~family_right & garments
    order = np.lexsort((~family_sure, ~wrong))  # wrong first, and of those the sure ones first
    worst = [int(i) for i in order if wrong[i]]
    return {
        "rows": rows,
        "count": len(photos),
        "exact_accuracy": _share(exact_right[with_exact]),
        "family_accuracy": _share(family_right[garments]),
        "confident": _share(confident[garments]),
        "confident_family_accuracy": _share(family_right[garments & confident]),
        "family_sure": _share(family_sure[garments]),
        "family_sure_accuracy": _share(family_right[garments & family_sure]),
        "no_class_unsure": _share(~family_sure[~garments]),
        "unlike": _share(unlike[garments]),
        "worst": worst,
        "labels": labels,
        "confident_flags": confident,
        "family_flags": family_sure,
        "inputs": answers.inputs,
    }


def format_table(table: dict[str, Any]) -> list[str]:
    """The table as aligned text lines, for the benchmark's printout."""

    def pct(x: float | None) -> str:
        return "   -  " if x is None else f"{100 * x:5.1f}%"

    head = f"{'folder':<11} {'n':>4}  {'judged by':<16} {'acc':>6} {'family':>6} {'class':>6} {'cls ok':>7}"
    lines = [head + f" {'confident':>9} {'fam ok':>6} {'unsure':>6} {'unlike':>6}"]
    for r in table["rows"]:
        lines.append(
            f"{r['folder']:<11} {r['count']:>4}  {r['judged_by']:<16} {pct(r['accuracy'])} {pct(r['family_accuracy'])} "
            f"{pct(r['confident'])} {pct(r['confident_family_accuracy']):>7} {pct(r['family_sure']):>9} "
            f"{pct(r['family_sure_accuracy'])} {pct(r['unsure'])} {pct(r.get('unlike'))}"
        )
    lines.append(
        f"garments with a class: exact {pct(table['exact_accuracy'])}, family {pct(table['family_accuracy'])}, "
        f"confident of the class {pct(table['confident'])}, right {pct(table['confident_family_accuracy'])}, "
        f"confident (of the family at least) {pct(table['family_sure'])}, right family "
        f"{pct(table['family_sure_accuracy'])}, "
        f"unlike the training images {pct(table.get('unlike'))}; "
        f"without a class: unsure {pct(table['no_class_unsure'])}"
    )
    return lines
