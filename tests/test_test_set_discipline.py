"""The test set is read once, in `evaluate`: no other code of the pipeline, the service or the development
benchmarks touches the test arrays, so nothing can be chosen on them.

Checked on the source: every read of a `test_images` or `test_labels` attribute in `fmnist/`, `flows/`, `serving/`
and `benchmarks/` must sit in a function on the allow-list below, each with the reason it may.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_ARRAYS = {"test_images", "test_labels"}
# (file, function) -> why it may read the test arrays.
ALLOWED = {
    ("fmnist/pipeline.py", "evaluate_selected"): "the evaluate step: the test set's one reader in a run",
    ("benchmarks/serve_load.py", "test_images"): "load traffic for the service: real images, nothing chosen",
    (
        "benchmarks/train_speed.py",
        "run_profile",
    ): "a speed benchmark that reports test accuracy beside time; chooses nothing",
}


def reads_of_test_arrays(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every attribute read named like a test array in the file at `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Attribute) and child.attr in TEST_ARRAYS and isinstance(child.ctx, ast.Load):
                found.append((function, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_only_the_evaluate_step_reads_the_test_arrays():
    offenders = []
    for folder in ("fmnist", "flows", "serving", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative == "fmnist/core/data.py":
                continue  # where the arrays are loaded and verified
            offenders += [
                f"{relative}:{line} in {function}()"
                for function, line in reads_of_test_arrays(path)
                if (relative, function) not in ALLOWED
            ]
    assert not offenders, "test arrays read outside evaluate: " + ", ".join(offenders)


def test_the_check_finds_a_read(tmp_path):
    """The check is not vacuous: a read of the test arrays in a helper is found and named."""
    source = tmp_path / "tuning.py"
    source.write_text("def tune(data):\n    return data.test_images.mean()\n")
    assert reads_of_test_arrays(source) == [("tune", 2)]
    # And the allowed reader is found too, so an empty result elsewhere means no reads, not a blind parser.
    assert any(f == "evaluate_selected" for f, _ in reads_of_test_arrays(ROOT / "fmnist" / "pipeline.py"))


# The real photographs' report split is held to the same rule: read by the evaluate step's report only. Any call of
# `load_real_photos` whose split is not a literal other than "report" must sit in an allowed function, so a split
# passed in a variable cannot walk around the check.
REAL_REPORT_ALLOWED = {
    ("fmnist/evaluation/report.py", "real_photo_section"): "the evaluate step's real-photograph section",
}


def real_report_reads(path: Path) -> list[tuple[str, int]]:
    """(enclosing function, line) of every `load_real_photos(...)` call that may read the report split."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Call):
                callee = child.func.attr if isinstance(child.func, ast.Attribute) else getattr(child.func, "id", "")
                split = (
                    child.args[0] if child.args else next((k.value for k in child.keywords if k.arg == "split"), None)
                )
                literal = isinstance(split, ast.Constant) and split.value != "report"
                if callee == "load_real_photos" and not literal:
                    found.append((function, child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_only_the_evaluate_step_reads_the_real_report_split():
    offenders = []
    for folder in ("fmnist", "flows", "serving", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            offenders += [
                f"{relative}:{line} in {function}()"
                for function, line in real_report_reads(path)
                if (relative, function) not in REAL_REPORT_ALLOWED
            ]
    assert not offenders, "the real photographs' report split read outside evaluate: " + ", ".join(offenders)


def test_the_real_split_check_finds_a_read_and_a_variable(tmp_path):
    source = tmp_path / "tuning.py"
    source.write_text(
        "def tune():\n    return load_real_photos('report')\n"
        "def sneaky(split):\n    return real_photos.load_real_photos(split=split)\n"
        "def fine():\n    return load_real_photos('validation')\n"
    )
    assert real_report_reads(source) == [("tune", 2), ("sneaky", 4)]
