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


README = PKG.parent / "README.md"


def readme_map(text: str) -> list[tuple[str, str]]:
    """(first cell, second cell) of each row of README's "Where things are" table."""
    section = text.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[1]))
    return rows


def unnamed_modules(text: str, pkg: Path = PKG) -> list[str]:
    """Modules under pkg that the map does not name: `icm_backend/x.py` (or `x.py`) in a row's folder cell
    for a top-level module; for `icm_backend/sub/m.py`, a row whose folder cell is `icm_backend/sub/` and
    whose description names `m` in backticks (the package's own __init__.py is named by its row)."""
    rows = readme_map(text)
    missing = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        if len(rel.parts) == 1:
            named = any(f"`{pkg.name}/{rel.name}`" in where or f"`{rel.name}`" in where for where, _ in rows)
        else:
            folder = f"`{pkg.name}/{'/'.join(rel.parts[:-1])}/`"
            descs = [what for where, what in rows if folder in where]
            named = bool(descs) and (path.name == "__init__.py" or any(f"`{path.stem}`" in d for d in descs))
        if not named:
            missing.append(str(rel))
    return missing


def test_readme_map_names_every_module():
    missing = unnamed_modules(README.read_text(encoding="utf-8"))
    assert not missing, f"README's 'Where things are' table does not name {missing}: add them (one line each)"


def test_the_map_test_catches_an_unnamed_module(tmp_path):
    pkg = tmp_path / "icm_backend"
    (pkg / "engine").mkdir(parents=True)
    for rel in ("__init__.py", "cli.py", "engine/__init__.py", "engine/model.py", "engine/tokens.py"):
        (pkg / rel).write_text("")
    text = ("## Where things are\n\n| folder | what |\n|---|---|\n| `icm_backend/__init__.py` | library |\n"
            "| `icm_backend/engine/` | `model` (an LM) and tokens |\n\n## Next\n| `cli.py` | not the map |\n")
    assert unnamed_modules(text, pkg) == ["cli.py", "engine/tokens.py"]
