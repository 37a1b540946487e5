"""The code stays easy to see: files of at most ~400 lines, functions of at most ~60, no import cycle between
modules of one folder, and no citation of a document this repository does not have. The bars hold for the
product's folders and for the benchmarks' (bench/) alike.

`python tests/test_code_layout.py` prints the measurements (file sizes, the largest functions, the import graph).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"jobs": "rayinpaint.jobs", "model": "rayinpaint.model", "io": "rayinpaint.io",
           "ledger": "rayinpaint.ledger", "bench": "rayinpaint.bench", "detect": "rayinpaint.detect"}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60


def product_files() -> dict[str, str]:
    return {f"{d}/{p.name}": p.read_text() for d in FOLDERS for p in sorted((ROOT / d).glob("*.py"))}


def function_sizes() -> list[tuple[int, str]]:
    out = []
    for name, text in product_files().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    return sorted(out, reverse=True)


def _imported(folder: str, module: str, node) -> list[str]:
    """Sibling modules (of `folder`) that an import node names, lazy imports inside functions included."""
    package = FOLDERS[folder]
    if isinstance(node, ast.ImportFrom):
        if node.level == 1:
            return [node.module] if node.module else [a.name for a in node.names]
        if node.module and node.module.startswith(package):
            rest = node.module[len(package):].lstrip(".")
            return [rest] if rest else [a.name for a in node.names]
    if isinstance(node, ast.Import):
        return [a.name[len(package) + 1:] for a in node.names if a.name.startswith(package + ".")]
    return []


def import_graph() -> dict[str, set[str]]:
    files = product_files()
    edges: dict[str, set[str]] = {}
    for name, text in files.items():
        folder, module = name[:-3].split("/")
        for node in ast.walk(ast.parse(text)):
            for target in _imported(folder, module, node):
                target = target.split(".")[0]
                if target != module and f"{folder}/{target}.py" in files:
                    edges.setdefault(f"{folder}/{module}", set()).add(f"{folder}/{target}")
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, seen = [], set()

    def walk(node, path):
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                loop = path[path.index(nxt):]
                if frozenset(loop) not in seen:
                    seen.add(frozenset(loop))
                    found.append(loop + [nxt])
            else:
                walk(nxt, path + [nxt])

    for start in sorted(edges):
        walk(start, [start])
    return found


def test_no_product_file_is_too_long():
    long = {n: t.count("\n") for n, t in product_files().items() if t.count("\n") > MAX_FILE_LINES}
    assert not long, long


def test_no_product_function_is_too_long():
    long = [(n, f) for n, f in function_sizes() if n > MAX_FUNCTION_LINES]
    assert not long, long


def test_no_import_cycle_within_a_folder():
    assert cycles(import_graph()) == []


def _imports(text: str) -> set[str]:
    """Every module name an import in `text` names, lazy imports inside functions included (absolute names)."""
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
    return out


def test_the_bookkeeping_imports_neither_ray_nor_the_job():
    """ledger/ is plain functions and classes over pyarrow and an embedded engine: testable without Ray."""
    bad = {name: sorted(m for m in _imports(text) if m.split(".")[0] == "ray" or m.startswith("rayinpaint.jobs"))
           for name, text in product_files().items() if name.startswith("ledger/")}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_no_product_module_imports_the_benchmarks_at_module_level():
    """bench/ uses the product, never the other way round: only the command line's `demo` and `bench` commands
    load it, inside the functions that run them."""
    bad = []
    for name, text in product_files().items():
        if name.startswith("bench/"):
            continue
        for node in ast.parse(text).body:  # module level only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad += [f"{name}: {n}" for n in names if n.startswith("rayinpaint.bench")]
    assert not bad, bad
    lazy = sorted(name for name, text in product_files().items()
                  if not name.startswith("bench/") and any(m.startswith("rayinpaint.bench") for m in _imports(text)))
    assert lazy == ["jobs/cli.py"], lazy


def test_no_citation_of_documents_the_repository_lacks():
    """Comments cite docs/ (e.g. docs/model.md §7.2), never a file that is not here; a section sign in product
    code belongs to a docs/model.md citation on its line or the few lines before."""
    tests = {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted((ROOT / "tests").rglob("test_*.py"))}
    tests.pop(Path(__file__).resolve().relative_to(ROOT).as_posix())
    assert {name.split("/")[1] for name in tests} >= {"io", "model", "ledger", "job", "reliability", "bench"}, "tests/*/"
    texts = {**product_files(), **tests}
    missing = sorted({(name, doc) for name, text in texts.items() for doc in re.findall(r"[\w./-]+\.md\b", text)
                      if not (ROOT / doc).exists() and not (ROOT / "docs" / doc).exists()})
    assert not missing, missing
    bare = []
    for name, text in product_files().items():
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if "§" in line and not any("docs/model.md" in x for x in lines[max(0, i - 6):i + 1]):
                bare.append(f"{name}:{i + 1}")
    assert not bare, bare


def test_every_test_file_a_document_names_exists():
    """A path under tests/ named in a document, an example or a test (README, RELIABILITY.md, BENCHMARKS.md, docs/,
    examples/, .ci/, tests/) is a file that is here: test files move with the folders they are in."""
    docs = [*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "examples").rglob("*"),
            *(ROOT / ".ci").rglob("*"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "tests").rglob("*.md")]
    named = {(p.relative_to(ROOT).as_posix(), cited) for p in docs if p.is_file()
             for cited in re.findall(r"\btests/[\w./-]*\w", p.read_text(errors="replace"))}
    assert any(cited.startswith("tests/reliability/") for _, cited in named)  # the documents were read
    missing = sorted((doc, cited) for doc, cited in named if not (ROOT / cited).exists())
    assert not missing, missing


if __name__ == "__main__":
    print("files over 200 lines:")
    for name, text in sorted(product_files().items(), key=lambda kv: -kv[1].count("\n")):
        if text.count("\n") > 200:
            print(f"  {text.count(chr(10)):5d} {name}")
    print("functions over 40 lines:")
    for n, f in function_sizes():
        if n > 40:
            print(f"  {n:5d} {f}")
    print("imports within a folder:")
    for node, targets in sorted(import_graph().items()):
        print(f"  {node} -> {', '.join(sorted(targets))}")
    print("cycles:", cycles(import_graph()) or "none")
