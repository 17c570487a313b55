"""The test set is read once, in `evaluate`: no other code of the pipeline, the service or the development
benchmarks touches the test split, so nothing can be chosen on it.

Enforced where the data is: `FashionMNIST` has no test attributes, `FashionMNIST.test_split()` hands the split only
to the callers on `fmnist.core.data.TEST_SPLIT_READERS` (checked at run time, by the caller's file and function),
and `read_idx` refuses the test files to anyone but the loader. Checked on the source as a second line: the ways
around the accessor (a raw file name, the files' table, a computed attribute name, torchvision's test flag, the
sealed field) do not appear in `fmnist/`, `flows/`, `serving/`, `registry/` or `benchmarks/`.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from fmnist.core.data import FILES, TEST_SPLIT_READERS, TestSplitRefused, load_dataset, read_idx

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("fmnist", "flows", "serving", "registry", "benchmarks")
LOADER = "fmnist/core/data.py"  # where the files are read, verified and sealed
# Names that reach the test split other than through the accessor: the arrays' old attribute names, the sealed
# field, and the files' table (whose test entries give the file names).
SEALED_NAMES = {"test_images", "test_labels", "_sealed_test", "FILES"}
# Computed attribute names that are not about the data, each with where it is and why it is safe.
COMPUTED_GETATTR = {
    ("fmnist/promotion.py", "_absolute"): "a promotion rule's threshold, named by the metric's rule field",
    ("flows/shared_cloud.py", "cloud_compute.pre_mutate"): "the step a decorator is attached to, by the step's name",
    ("serving/cli.py", "main"): "the parsed command-line flags, by the setting's name",
    ("benchmarks/serve_load.py", "PhaseResult.merge"): "the benchmark's own counters, by their field names",
    ("registry/runs.py", "artifact"): "a run's artifact by its name, from registry.artifacts' constants",
}


def bypasses(path: Path, relative: str) -> list[str]:
    """Each place in the file at `path` that reaches, or could reach, the test split other than as allowed."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{function}.{child.name}" if function != "<module>" else child.name
            where = f"{relative}:{getattr(child, 'lineno', '?')} in {function}"
            if isinstance(child, ast.Attribute) and child.attr in SEALED_NAMES:
                found.append(f"{where}: attribute .{child.attr}")
            opens = isinstance(child, ast.Attribute) and child.attr == "test_split"
            if opens and (relative, function) not in TEST_SPLIT_READERS:
                found.append(f"{where}: test_split() outside TEST_SPLIT_READERS")
            named = child.id if isinstance(child, ast.Name) else child.name if isinstance(child, ast.alias) else ""
            if named == "FILES":  # the files' table: its test entries name the raw files
                found.append(f"{where}: name {named}")
            text = child.value if isinstance(child, ast.Constant) and isinstance(child.value, str) else ""
            if "t10k" in text or text in SEALED_NAMES:
                found.append(f"{where}: string {child.value!r}")
            if isinstance(child, ast.Call):
                callee = child.func.id if isinstance(child.func, ast.Name) else getattr(child.func, "attr", "")
                computed = len(child.args) > 1 and not isinstance(child.args[1], ast.Constant)
                if callee == "getattr" and computed and (relative, function) not in COMPUTED_GETATTR:
                    found.append(f"{where}: getattr with a computed name")
                if callee == "vars" or any(
                    k.arg == "train" and isinstance(k.value, ast.Constant) and k.value.value is False
                    for k in child.keywords
                ):
                    found.append(f"{where}: {callee}(...train=False) or vars()")
            visit(child, name)

    visit(tree, "<module>")
    return found


def sources():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative != LOADER:
                yield path, relative


def test_nothing_walks_around_the_test_split_accessor():
    offenders = [b for path, relative in sources() for b in bypasses(path, relative)]
    assert not offenders, "the test split reached outside its accessor: " + "; ".join(offenders)


def test_the_readers_exist_and_only_the_evaluate_step_reads_in_a_run():
    """Each allowed reader is a real function of a real file; of the pipeline's code, only `evaluate` is one."""
    for relative, function in TEST_SPLIT_READERS:
        source = (ROOT / relative).read_text()
        assert f"def {function.split('.')[-1]}(" in source, f"{relative} has no {function}"
    library = [key for key in TEST_SPLIT_READERS if key[0].split("/")[0] in ("fmnist", "flows", "serving", "registry")]
    assert library == [("fmnist/pipeline.py", "evaluate_selected")]


@pytest.mark.parametrize(
    "planted",
    [
        "def tune(data):\n    return data.test_images.mean()\n",
        "def tune(data):\n    return getattr(data, 'test_' + 'labels')\n",
        "def tune(data):\n    return data._sealed_test[1]\n",
        "from fmnist.core.data import FILES, read_idx\ndef tune(p):\n    return read_idx(p, FILES['test_labels'])\n",
        "import gzip\ndef tune(d):\n    return gzip.open(d / 't10k-labels-idx1-ubyte.gz').read()\n",
        "from torchvision import datasets\ndef tune(root):\n    return datasets.FashionMNIST(root, train=False)\n",
        "def tune(data):\n    return data.test_split()\n",
        "def tune(data):\n    return vars(data)\n",
    ],
)
def test_the_source_check_finds_each_planted_bypass(tmp_path, planted):
    """The bypasses an earlier check let through, planted in a library module, are each found."""
    source = tmp_path / "selection.py"
    source.write_text(planted)
    assert bypasses(source, "fmnist/training/selection.py"), planted


def test_the_accessor_refuses_a_caller_not_on_the_list_and_names_it():
    data = load_dataset(download=False)
    with pytest.raises(TestSplitRefused, match=r"tests/test_test_set_discipline\.py:test_the_accessor_refuses"):
        data.test_split()
    assert not hasattr(data, "test_images") and not hasattr(data, "test_labels")
    assert "sealed" not in repr(data) and "test" not in repr(data)


def test_a_planted_reader_in_a_library_module_fails_at_run_time(tmp_path):
    """A module anywhere (here one outside the tree, as a plugin would be) that asks for the split is refused."""
    source = tmp_path / "tuning.py"
    source.write_text("def pick_threshold(data):\n    images, labels = data.test_split()\n    return labels.mean()\n")
    spec = importlib.util.spec_from_file_location("tuning", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(TestSplitRefused, match=r"tuning\.py:pick_threshold asked for the Fashion-MNIST test split"):
        module.pick_threshold(load_dataset(download=False))


def test_the_test_files_are_not_read_past_the_loader():
    directory = Path(load_dataset(download=False).source)
    for key in ("test_images", "test_labels"):
        spec = FILES[key]
        with pytest.raises(TestSplitRefused, match=f"read {spec.stem} directly"):
            read_idx(directory / (spec.stem + ".gz"), spec)
    train, _ = read_idx(directory / (FILES["train_labels"].stem + ".gz"), FILES["train_labels"])
    assert train.shape == (60000,)  # the training files stay readable


def test_in_the_smoke_run_only_the_evaluate_step_opened_the_test_split(smoke_run):
    """The real flow: the evaluate step's log says it opened the split, through the allowed function; no other
    task's log does."""
    opened = {}
    for step in smoke_run:
        for task in step:
            opened[f"{step.id}/{task.id}"] = "test split opened by" in task.stderr + task.stdout
    evaluate = [pathspec for pathspec in opened if pathspec.startswith("evaluate/")]
    assert len(evaluate) == 1 and opened[evaluate[0]]
    assert "test split opened by fmnist/pipeline.py:evaluate_selected" in next(iter(smoke_run["evaluate"])).stderr
    assert [pathspec for pathspec, did in opened.items() if did] == evaluate


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
