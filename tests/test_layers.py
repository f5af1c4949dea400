"""The tree reads as the pipeline: each package imports only the packages below it,

    cli -> {schedule, report} -> stores -> study -> evaluate -> run -> config -> data -> meanflow

checked twice: on every import statement of the package's source (those inside functions too), and on
sys.modules after importing the package in a fresh interpreter. The stores import no torch; one training
run imports no MLflow or Optuna; no module is over 300 lines."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "workbench"
ORDER = [("cli",), ("schedule", "report"), ("stores",), ("study",), ("evaluate",), ("run",), ("config",), ("data",),
         ("meanflow",)]
RANK = {name: rank for rank, names in enumerate(ORDER) for name in names}
PACKAGES = sorted(RANK)


def package_of(module: str) -> str | None:
    """'workbench.stores.layout' -> 'stores'; None for what is not the workbench's."""
    parts = module.split(".")
    return parts[1] if parts[0] == "workbench" and len(parts) > 1 else None


def imported(path: Path) -> set[str]:
    """Every workbench module an import statement of this file names, but those for type annotations only
    (under `if TYPE_CHECKING:`: the science names config's types without importing it)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "workbench":  # from workbench import config
                names |= {f"workbench.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("workbench")}


def files_of(package: str) -> list[Path]:
    folder = ROOT / package
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [ROOT / f"{package}.py"]


def allowed(package: str, other: str) -> bool:
    return other == package or RANK[other] > RANK[package]


def test_every_module_belongs_to_a_package_of_the_rule():
    top = {p.stem for p in ROOT.iterdir() if p.suffix == ".py" and p.stem != "__init__"} | {
        p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_import_statement_points_down(package):
    wrong = [f"{path.relative_to(ROOT.parent)} imports {name}" for path in files_of(package)
             for name in imported(path) if package_of(name) and not allowed(package, package_of(name))]
    assert not wrong, "\n".join(wrong)


def test_an_upward_import_is_found():
    """The check itself: a report imported by the scheduler, or MLflow's layout by a training run, is wrong."""
    assert not allowed("schedule", "report") and not allowed("report", "schedule")
    assert not allowed("run", "stores") and not allowed("meanflow", "config")
    assert allowed("cli", "meanflow") and allowed("stores", "evaluate")


LOADED = """import importlib, pkgutil, sys
package = importlib.import_module("workbench.{package}")
for info in pkgutil.walk_packages(getattr(package, "__path__", []), "workbench.{package}."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
print(" ".join(sorted(sys.modules)))"""


def loaded(package: str) -> set[str]:
    code = LOADED.format(package=package)
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "cli"])  # the CLI: tests/test_cli.py
def test_importing_a_package_loads_only_the_packages_below_it(package):
    modules = loaded(package)
    wrong = sorted(m for m in modules if package_of(m) and not allowed(package, package_of(m)))
    assert not wrong, wrong
    if package == "stores":
        assert "torch" not in modules  # the stores are read where no model is (a report, a dashboard)
    if package == "run":
        assert not {"mlflow", "optuna"} & modules  # `wb train` records a run without them


def test_no_module_is_over_300_lines():
    long = {str(path.relative_to(ROOT.parent)): n for path in ROOT.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 300}
    assert not long, long
