"""The import layering of docs/architecture.md, checked over the source (no import is run):
core <- contract <- stages <- tools <- jobs/trainer, no circle between modules or stage
packages, and imports of the project's own modules at module top unless deferred on purpose."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {"text", "matching", "_match_kernel", "balance", "languages", "identity"}
CONTRACT |= {"reference_metaclip"}
STAGES = {"metadata", "alt_text", "curate", "shards", "image_filter", "report"}
LAYERS = {"core": 0, "contract": 1, "stage": 2, "tools": 3, "app": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("jobs", "trainer"):
        return "app"
    if len(parts) == 1:
        return "contract"  # the package itself (its empty __init__)
    if parts[1] == "core":
        return "core"
    if parts[1] == "tools":
        return "tools"
    if parts[1] in STAGES:
        return "stage"
    assert parts[1] in CONTRACT or parts[1] in ("sample_data", "_schemas"), module
    return "contract"


def sources() -> dict[str, Path]:
    files = [*ROOT.glob("curation/**/*.py"), *ROOT.glob("jobs/*.py"), *ROOT.glob("trainer/*.py")]
    return {module_name(p): p for p in files if "sample_data" not in p.parts}


def project_imports(path: Path, known: set[str]):
    """(imported project module, line, inside a function?) of every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in known:  # `from pkg import module` or `import pkg.mod`
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in ("curation", "jobs", "trainer"):
                yield name, node.lineno, id(node) in inside


def graph() -> dict[str, set[str]]:
    modules = sources()
    known = set(modules)
    return {
        name: {target for target, _, _ in project_imports(path, known) if target != name}
        for name, path in modules.items()
    }


def test_imports_only_point_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            if LAYERS[layer(target)] > LAYERS[layer(module)]:
                wrong.append(f"{module} ({layer(module)}) imports {target} ({layer(target)})")
            if target.split(".")[0] in ("jobs", "trainer") and module.startswith("curation"):
                wrong.append(f"{module} imports {target}: the library never imports an app")
    assert not wrong, "\n".join(sorted(wrong))


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_between_modules_or_stage_packages():
    edges = graph()
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))
    packages: dict[str, set[str]] = {}
    for module, targets in edges.items():
        if layer(module) != "stage":
            continue
        source = module.split(".")[1]
        packages.setdefault(source, set())
        packages[source] |= {
            t.split(".")[1] for t in targets if layer(t) == "stage" and t.split(".")[1] != source
        }
    assert _cycle(packages) is None, " -> ".join(_cycle(packages))


def test_project_imports_are_at_module_top_unless_deferred_on_purpose():
    """In the library and the jobs, an import of the project's own modules inside a function is
    allowed only with a comment just above it that says it is deferred and why (an optional
    heavy dependency)."""
    modules = sources()
    known = set(modules)
    late = []
    for name, path in modules.items():
        if name.startswith("trainer"):
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, line, inside in project_imports(path, known):
            above = " ".join(lines[max(0, line - 4) : line - 1]).lower()
            if inside and "deferred" not in above:
                late.append(f"{path.relative_to(ROOT)}:{line} imports {target} in a function")
    assert not late, "\n".join(sorted(set(late)))


def test_the_contract_and_little_else_sits_at_the_top_of_the_package():
    top = sorted(p.stem for p in (ROOT / "curation").glob("*.py") if p.stem != "__init__")
    assert len(top) + 1 <= 8, top  # __init__ counted
    assert set(top) <= CONTRACT, set(top) - CONTRACT
    stages = {p.name for p in (ROOT / "curation").iterdir() if (p / "__init__.py").exists()}
    assert stages == STAGES | {"core", "tools"}


def test_the_checker_sees_a_violation(tmp_path):
    """The rules are not vacuous: a made-up upward import and a circle are both caught."""
    edges = {"curation.core.a": {"curation.curate.job"}}
    assert any(LAYERS[layer(t)] > LAYERS[layer(m)] for m, ts in edges.items() for t in ts)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from curation.curate import job\n")
    assert list(project_imports(source, {"curation.curate.job"})) == [
        ("curation.curate.job", 2, True)
    ]


def test_no_pickle_in_the_library():
    """D7 of docs/semantics.md: automata (and everything else) are rebuilt from the Parquet
    tables in each worker, never loaded from pickles: no library module imports a pickler."""
    picklers = {"pickle", "cloudpickle", "dill", "joblib", "_pickle", "shelve"}
    found = []
    for name, path in sources().items():
        if not name.startswith("curation"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{name} imports {n}" for n in names if n.split(".")[0] in picklers]
    assert not found, found
