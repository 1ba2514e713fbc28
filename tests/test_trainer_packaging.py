"""`pip install '.[train]'` alone gives a working trainer: every third-party module that
trainer/ imports is provided by the core dependencies or the `train` extra."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def imported_top_level_modules(folder: Path) -> set[str]:
    names = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def requirement_names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }


def test_train_extra_covers_every_trainer_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = requirement_names(
        project["dependencies"] + project["optional-dependencies"]["train"]
    )
    providers = packages_distributions()
    modules = imported_top_level_modules(ROOT / "trainer") - set(sys.stdlib_module_names)
    modules -= {"trainer", "curation", "__future__"}  # the project's own, in the same wheel
    assert {"torch", "open_clip", "webdataset", "braceexpand", "pyarrow"} <= modules
    # remote shards and checkpoints go through curation.core.uris: pyarrow's filesystems, and
    # fsspec for the schemes pyarrow lacks
    assert "fsspec" in declared
    missing = {}
    for module in sorted(modules):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"trainer/ imports these, but [train] does not declare them: {missing}"
    # --tokenizer needs transformers: its own extra, not forced on every trainer install
    multilingual = requirement_names(project["optional-dependencies"]["multilingual"])
    assert "transformers" in multilingual and "transformers" not in declared


def test_the_trainer_imports_curation_without_spark():
    """--online-curation imports curation.curate.online (and through it the contract and
    curation.core): a trainer-only install has no pyspark, so none of that may import it."""
    import subprocess

    code = (
        "import sys; sys.modules['pyspark'] = None\n"
        "import curation.curate.online, trainer.data, trainer.train\n"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
