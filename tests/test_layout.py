"""The tree shows the data flow: each stage imports only the stages below it, and no module
imports itself back through others (no import circle). Read from the ``import`` statements of
every module, those inside functions and under ``TYPE_CHECKING`` included."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The stages, lowest first: a module may import its own stage and those before it.
STAGES = ("strategies", "conformance.core", "conformance.zoo", "conformance.truth", "conformance.judging",
          "conformance.running", "conformance.evidence", "conformance")


def stage_of(module: str) -> int:
    """The rank of the stage that owns ``module`` (the longest matching prefix)."""
    matches = [stage for stage in STAGES if module == stage or module.startswith(f"{stage}.")]
    return STAGES.index(max(matches, key=len))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``path`` imports (a ``from package import module`` names the module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def project_graph() -> dict[str, set[str]]:
    paths = [*ROOT.joinpath("conformance").rglob("*.py"), *ROOT.joinpath("strategies").rglob("*.py")]
    known = {module_name(path) for path in paths}
    return {module_name(path): imports(path, known) for path in paths}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{module} -> {target}" for module, targets in graph.items() for target in targets
                  if stage_of(target) > stage_of(module))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk (each reported once, from its first module).
    A package's ``__init__`` is no edge to its own modules: Python runs it first anyway."""
    found, state, stack = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if module.startswith(f"{target}."):
                continue
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_no_stage_imports_a_stage_above_it():
    graph = project_graph()
    assert {"conformance.truth.oracle", "conformance.judging.checks", "strategies"} <= graph["conformance.running.runner"]  # the reader reads
    assert upward_imports(graph) == []


def test_there_is_no_import_circle():
    assert circles(project_graph()) == []


def test_every_module_belongs_to_a_stage_and_the_stages_are_packages():
    graph = project_graph()
    for stage in STAGES[1:-1]:
        assert stage in graph, f"{stage} is no package"
    top = [module for module in graph if module.count(".") == 1 and module.startswith("conformance.") and module not in STAGES]
    assert sorted(top) == ["conformance.__main__", "conformance.assertions", "conformance.cli", "conformance.config",
                           "conformance.pytest_plugin"], "only the front doors sit at the top of conformance/"


def test_negative_control_a_planted_upward_import_and_circle_are_found():
    graph = {
        "conformance.core.timing": {"conformance.judging.checks"},  # up two stages
        "conformance.judging.checks": {"conformance.judging.diagnoses"},
        "conformance.judging.diagnoses": {"conformance.judging.checks"},  # a circle within a stage
    }
    assert upward_imports(graph) == ["conformance.core.timing -> conformance.judging.checks"]
    assert circles(graph) == [["conformance.judging.checks", "conformance.judging.diagnoses", "conformance.judging.checks"]]


def test_the_reader_sees_lazy_and_type_checking_imports(tmp_path):
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from conformance.running.runner import RunConfig\n" \
             "def f():\n    from conformance.evidence import results\n"
    path = ROOT / "conformance" / "core" / "_probe_for_layout_test.py"
    path.write_text(source)
    try:
        known = {"conformance.running.runner", "conformance.evidence.results", "conformance.evidence"}
        assert imports(path, known) == known
    finally:
        path.unlink()
