"""The map of the package holds: imports point one way (commands -> server/finetune/compare ->
jobs/labelstudio/versions -> engine), and the engine reads no environment. Read from the source's
import statements, so a new import that breaks the layering fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "icm_backend"

# Which top-level parts of icm_backend each part may import (besides itself and the leaf modules).
LEAVES = {"errors", "envvars"}
ALLOWED = {
    "engine": set(),
    "labelstudio": {"engine"},
    "jobs": {"engine"},
    "versions": {"engine"},
    "finetune": {"engine", "labelstudio", "jobs", "versions"},
    "compare": {"engine", "labelstudio", "jobs", "versions"},
    "server": {"engine", "labelstudio", "jobs", "versions", "finetune"},
    "commands": {"engine", "labelstudio", "jobs", "versions", "finetune", "compare", "server"},
    "cli": {"commands"},
    "__init__": {"engine"},
    "errors": set(),
    "envvars": set(),
}


def part_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_parts(path: Path) -> set[tuple[str, int]]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            bits = name.split(".")
            if bits[0] == "icm_backend" and len(bits) > 1:
                out.add((bits[1], node.lineno))
    return out


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_one_way(path):
    part = part_of(path)
    allowed = ALLOWED.get(part)
    assert allowed is not None, f"{path}: new top-level part {part!r}: add it to the map (README, this test)"
    bad = sorted((other, line) for other, line in imported_parts(path)
                 if other != part and other not in LEAVES and other not in allowed)
    assert not bad, f"{path.relative_to(PKG)} imports {bad} (line numbers); {part} may import only {sorted(allowed)}"


def test_finetune_and_compare_never_import_server():
    offenders = [(str(p.relative_to(PKG)), line) for p in MODULES if part_of(p) in ("finetune", "compare")
                 for other, line in imported_parts(p) if other == "server"]
    assert offenders == []


def test_engine_reads_no_environment_and_knows_no_web_or_label_studio():
    for path in (PKG / "engine").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                # The model cache location and HF's offline switch are the only environment the engine
                # consults (where files live, not how it labels).
                assert path.name == "model.py", f"{path.name}:{node.lineno} reads the environment"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for m in mods:
                    assert not m.split(".")[0] in ("flask", "werkzeug", "gunicorn", "label_studio_sdk"), \
                        f"{path.name}:{node.lineno} imports {m}"


def test_the_layering_test_catches_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from icm_backend.server.app import create_app\nimport icm_backend.jobs.queue\n")
    assert imported_parts(bad) == {("server", 1), ("jobs", 2)}
