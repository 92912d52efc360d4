"""The house's walls (docs/architecture.md), read from every import in src/ftmix: top-level, inside
functions, under ``try``. Only ``if TYPE_CHECKING:`` imports are left out: they never run."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
BASE = {"errors", "files", "units"}
TORCH_WORLD = ("torch", "peft", "deepspeed", "accelerate", "bitsandbytes", "flash_attn")
# transformers and datasets load torch only when a model or tensor is asked for; the torch-free
# rooms use their config classes and file readers lazily (the faces test below checks the import)
HEAVY = TORCH_WORLD + ("transformers", "datasets", "matplotlib", "rouge_score", "tokenizers", "numpy", "pyarrow", "huggingface_hub")
FREE = {"base", "catalog", "mixture", "estimate", "plan", "job"}

# room -> the rooms it may import (besides itself); docs/architecture.md, "Rooms and walls"
MAY_IMPORT = {
    "base": set(),
    "catalog": {"base"},
    "mixture": {"base"},
    "estimate": {"base", "catalog", "mixture"},
    "plan": {"base", "catalog", "mixture", "estimate"},
    "job": {"base", "catalog", "mixture", "estimate", "plan"},
    "model": {"base", "catalog", "mixture", "job"},
    "engines": {"base", "catalog", "mixture"},
    "measure": {"base", "catalog", "mixture", "estimate", "job", "model", "engines"},
    "train": {"base", "catalog", "mixture", "estimate", "plan", "job", "model", "engines", "measure"},
    "study": {"base", "catalog", "mixture", "estimate", "plan", "job"},
    "api": {"base", "catalog", "mixture", "estimate", "plan", "job", "model", "engines", "measure", "train",
            "study"},
    "cli": {"base", "catalog", "mixture", "estimate", "plan", "job", "model", "engines", "measure", "train",
            "study", "api"},
}


def room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "api"):
        return "api"
    if parts[1] == "__main__":
        return "cli"
    return "base" if parts[1] in BASE else parts[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "ftmix").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


class Imports(ast.NodeVisitor):
    """Every import of a module: (target, line, inside a function)."""

    def __init__(self, name: str, known: dict):
        self.name, self.known, self.found, self.depth = name, known, [], 0

    def visit_If(self, node):
        if not _type_only(node):
            self.generic_visit(node)

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            package = self.name if self.known[self.name].name == "__init__.py" else self.name.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                package = package.rsplit(".", 1)[0]
            base = f"{package}.{base}" if base else package
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self.found.append((sub if sub in self.known else base, node.lineno, self.depth > 0))


def all_imports():
    known = modules()
    table = {}
    for name, path in known.items():
        visitor = Imports(name, known)
        visitor.visit(ast.parse(path.read_text()))
        table[name] = list(dict.fromkeys(visitor.found))
    return known, table


KNOWN, IMPORTS = all_imports()


def internal(target: str) -> str | None:
    """The ftmix module an import names (a package's __init__ when it names the package)."""
    while target and target not in KNOWN:
        if "." not in target:
            return None
        target = target.rsplit(".", 1)[0]
    return target or None


def test_the_room_table_is_acyclic():
    done = set()

    def visit(r, path):
        assert r not in path, f"rooms import each other: {' -> '.join(path + [r])}"
        if r in done:
            return
        for other in MAY_IMPORT[r]:
            visit(other, path + [r])
        done.add(r)

    for r in MAY_IMPORT:
        visit(r, [])
    assert {room(m) for m in KNOWN} <= set(MAY_IMPORT), {room(m) for m in KNOWN} - set(MAY_IMPORT)


def test_no_room_imports_one_it_may_not():
    wrong = []
    for name, found in IMPORTS.items():
        for target, line, _ in found:
            other = internal(target) if target.startswith("ftmix") else None
            if other and room(other) != room(name) and room(other) not in MAY_IMPORT[room(name)]:
                wrong.append(f"{KNOWN[name].relative_to(SRC)}:{line} ({room(name)}) imports {other} ({room(other)})")
    assert not wrong, "\n".join(wrong)


def test_torch_free_rooms_never_import_the_torch_world():
    wrong = [f"{KNOWN[name].relative_to(SRC)}:{line} imports {target}"
             for name, found in IMPORTS.items() if room(name) in FREE
             for target, line, _ in found if target.split(".")[0] in TORCH_WORLD]
    assert not wrong, "\n".join(wrong)


def test_no_two_files_import_each_other():
    graph = {name: {internal(t) for t, _, _ in found if t.startswith("ftmix")} - {None, name}
             for name, found in IMPORTS.items()}
    # a package's __init__ re-exporting its own submodules is not a dependency between files
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                    if a in graph.get(b, ()) and not (b.startswith(a + ".") or a.startswith(b + "."))})
    assert not pairs, pairs


def _heavy_modules() -> set[str]:
    """ftmix modules whose import loads a heavy library (directly or through another ftmix module)."""
    heavy = {name for name, found in IMPORTS.items()
             if any(t.split(".")[0] in HEAVY for t, _, inner in found if not inner)}
    grew = True
    while grew:
        grew = False
        for name, found in IMPORTS.items():
            if name not in heavy and any(internal(t) in heavy for t, _, inner in found
                                         if not inner and t.startswith("ftmix")):
                heavy.add(name)
                grew = True
    return heavy


def test_imports_inside_functions_keep_a_heavy_dependency_lazy_and_say_so():
    heavy = _heavy_modules()
    wrong = []
    for name, found in IMPORTS.items():
        lines = KNOWN[name].read_text().splitlines()
        for target, line, inner in found:
            if not inner:
                continue
            where = f"{KNOWN[name].relative_to(SRC)}:{line}"
            lazy_target = (target.split(".")[0] in HEAVY or internal(target) in heavy) if target else False
            if not lazy_target:
                wrong.append(f"{where}: {target} is light; import it at the top")
                continue
            # the comment sits on the import or above the block of imports it starts
            above = line - 1
            while above > 0 and (not lines[above - 1].strip() or lines[above - 1].strip().startswith(
                    ("import ", "from ")) and "#" not in lines[above - 1]):
                above -= 1
            said = "# lazy" in lines[line - 1] or (above > 0 and "# lazy" in lines[above - 1])
            if not said:
                wrong.append(f"{where}: the lazy import of {target} needs a '# lazy: why' comment")
    assert not wrong, f"{len(wrong)} imports:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", ["ftmix.estimate", "ftmix.plan", "ftmix.job.preflight", "ftmix.study.runner",
                                    "ftmix.cli"])
def test_torch_free_faces_load_without_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in {TORCH_WORLD + ('transformers',)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
