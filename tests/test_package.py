"""The evaluation tooling's layout (odegpt_eval/): one job a module, imports that never go in a circle, the children
that run in a sandbox importing nothing of the runner's, and thin command lines in scripts/."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "odegpt_eval"
COMMANDS = {  # scripts/ command line -> the module it runs
    "benchmark.py": "benchmark",
    "check_constraints.py": "constraints",
    "kneser_ney.py": "kneser_ney",
    "rerank_generation.py": "rerank",
    "intake_reply.py": "intake",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The odegpt_eval modules a module imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            if node.module:
                found.add(f"{base}.{node.module}")
            else:
                found |= {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("odegpt_eval"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("odegpt_eval")}
    return found - {name}


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def cycle(graph: dict) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        if state.get(node) == 1:
            return path[path.index(node) :] + [node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            found = visit(dep, path + [node])
            if found:
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return None


def test_no_module_imports_another_in_a_circle():
    assert len(GRAPH) >= 25
    assert cycle(GRAPH) is None, " -> ".join(cycle(GRAPH))
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # and the check can fail


def test_the_children_import_nothing_of_the_runners():
    """They run inside the sandbox, where the package is not on the path: the standard library, numpy, torch and
    their wire format only."""
    for name in ("train_child", "score_child"):
        assert GRAPH[f"odegpt_eval.children.{name}"] <= {"odegpt_eval.children.wire"}
    assert GRAPH["odegpt_eval.children.wire"] == set()


def test_every_module_says_what_its_one_job_is():
    for path in PACKAGE.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert path.name == "__init__.py" and path.parent.name == "children" or doc, f"{path} has no docstring"
    listed = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    for path in PACKAGE.glob("*.py"):
        assert path.name == "__init__.py" or path.stem in listed, f"odegpt_eval/__init__.py does not list {path.stem}"


@pytest.mark.parametrize("script, module", list(COMMANDS.items()))
def test_scripts_are_thin_command_lines(script, module):
    text = (REPO / "scripts" / script).read_text()
    assert f"from odegpt_eval.{module} import main" in text and len(text.splitlines()) <= 15
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage" in proc.stdout.lower(), proc.stderr[-2000:]
