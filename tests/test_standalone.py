"""A clone stands alone: no Python file of the package, the tests or the benchmarks names a path outside
the repo (the old ../shared sibling, a developer's absolute paths). What they read is under data/
(data/README.md). Comments and docstrings count: a path written there is soon copied into code."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("icm_backend", "tests", "bench")

# Each pattern with why it is outside the repo. Container paths (/root/.cache inside the Docker image,
# checked by test_server_docker.py) are not a developer's machine and are not listed.
OUTSIDE = [
    (re.compile(r"/work/"), "a developer's checkout"),
    (re.compile(r"/home/[\w.-]+|/Users/[\w.-]+"), "a home directory"),
    (re.compile(r"/opt/"), "a machine's install location"),
    (re.compile(r"\.\./shared"), "the shared folder beside the checkout"),
    (re.compile(r"/\s*[\"']shared[\"']"), "the shared folder beside the checkout (as a Path join)"),
    (re.compile(r"ICM_SHARED_DIR"), "the shared folder's override"),
]


def outside_paths(root: Path, folders=SCANNED, skip: tuple[Path, ...] = ()) -> list[str]:
    """'file:line: text (why)' for every line of every .py file under root/folders naming a path outside."""
    hits = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            if path.resolve() in skip:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                for pattern, why in OUTSIDE:
                    if pattern.search(line):
                        hits.append(f"{path.relative_to(root)}:{n}: {line.strip()} ({why})")
    return hits


def test_no_python_file_names_a_path_outside_the_repo():
    # this file is skipped: its patterns spell what they forbid; so is the Docker files' static check, whose
    # paths (/opt/venv, /root/.cache) are inside the image, not on anybody's machine
    hits = outside_paths(REPO, skip=(Path(__file__).resolve(), (REPO / "tests" / "test_server_docker.py").resolve()))
    assert not hits, "paths outside the repo (move the data under data/, see data/README.md):\n" + "\n".join(hits)


def test_the_scan_names_file_and_line(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "b.py").write_text('x = 1\nDEV = REPO.parent / "shared" / "data"\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text('"""See ../shared/docs."""\nopen("/work/main/x")\n')
    hits = outside_paths(tmp_path, folders=("bench", "tests"))
    assert [h.split(": ", 1)[0] for h in hits] == ["bench/b.py:2", "tests/t.py:1", "tests/t.py:2"]


def test_the_data_the_tests_read_is_in_the_repo(data_dir):
    # the fixture points into the repo, and what it promises is there (no test skips for want of data)
    assert data_dir.resolve().is_relative_to(REPO)
    for rel in ("sst2/dev.tsv", "sst2/test.tsv", "paper/test_alpaca.json", "label-studio-1.23.2/setup.json",
                "README.md"):
        assert (data_dir / rel).is_file(), rel
    assert len((data_dir / "sst2" / "dev.tsv").read_text().splitlines()) == 1 + 872
    assert len((data_dir / "sst2" / "test.tsv").read_text().splitlines()) == 1 + 1821
