"""Docs point at what exists: every repository path named in the README, docs/, the benchmarks and
the source's docstrings and comments is in a clone, and none points outside it (the shared notes a
clone does not have)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.py")),
         *sorted((ROOT / "src" / "ftmix").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py")),
         *sorted((ROOT / "benchmarks" / "results").glob("*.md"))]
PATH = re.compile(r"(?<![\w./-])((?:src/ftmix|tests|docs|benchmarks)/[\w./-]*\w)")
ELSEWHERE = re.compile(r"\.\./shared|(?<![\w/])shared/(?:docs|data)/")


def named_paths(text: str):
    for match in PATH.finditer(text):
        path = match.group(1).rstrip(".")
        if "*" in path or "{" in path or path.endswith(("/", "-")):
            continue
        yield path


def test_every_path_the_docs_name_exists():
    missing = []
    for file in TEXTS:
        if file == Path(__file__):
            continue
        for path in named_paths(file.read_text()):
            target = ROOT / path
            # a named file or folder, or a module named by its path without ".py"
            if not (target.exists() or target.with_suffix(".py").exists() or any(target.parent.glob(target.name + "*"))):
                missing.append(f"{file.relative_to(ROOT)}: {path}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_nothing_points_outside_the_clone():
    outside = [f"{file.relative_to(ROOT)}:{n}" for file in TEXTS if file != Path(__file__)
               for n, line in enumerate(file.read_text().splitlines(), 1) if ELSEWHERE.search(line)]
    assert not outside, "\n".join(outside)
