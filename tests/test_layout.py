"""The library's layout: dependencies between subpackages point one way (``docs/design.md``, *Layers*).

Every ``import`` in ``sbt_lib`` is parsed (function-level imports included); an import of a
subpackage that sits at the same level or above the importer's is a reverse edge and fails here.
Inside the workbook, its parts (``config``, ``report``, ``pipeline``, ``cli``) are ordered the same way.
The design page's tables are the ones enforced here, and every ``file::name`` it cites exists.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "sbt_lib"
DESIGN = REPO / "docs" / "design.md"

# Each subpackage may import the top level and the subpackages listed for it; nothing imports workbook.
MAY_IMPORT = {
    "top": set(),
    "train": {"top"},
    "data": {"top"},
    "models": {"top"},
    "objective": {"top", "data", "models"},
    "generation": {"top", "models"},
    "eval": {"top", "data", "models"},
    "workbook": {"top", "train", "data", "models", "objective", "generation", "eval"},
}
ENTRY_POINTS = {"__init__.py", "__main__.py"}  # the package's face: may re-export anything


def layer(module: str, lib: Path = LIB) -> str:
    """'sbt_lib.models.tokenizer' -> 'models'; 'sbt_lib.train.trainer' -> 'train'; 'sbt_lib.checkpoint' -> 'top'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (lib / parts[1]).is_dir()) else "top"


def imported_modules(path: Path, lib: Path = LIB) -> list[tuple[int, str]]:
    """(line, absolute module) of every sbt_lib import in ``path``."""
    package = ".".join(("sbt_lib",) + path.relative_to(lib).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            found += [(node.lineno, t) for t in targets if t.startswith("sbt_lib")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sbt_lib")]
    return found


def edges(lib: Path = LIB) -> list[tuple[str, int, str, str]]:
    """(file, line, importer layer, imported layer) for every import inside the library at ``lib``."""
    out = []
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(lib)
        if len(rel.parts) == 1 and rel.name in ENTRY_POINTS:
            continue
        src = rel.parts[0] if len(rel.parts) > 1 else "top"
        for line, module in imported_modules(path, lib):
            if module != "sbt_lib":
                out.append((str(rel), line, src, layer(module, lib)))
    return out


def test_the_layout_has_the_subpackages_of_the_design():
    for pkg in sorted(set(MAY_IMPORT) - {"top"}):
        init = LIB / pkg / "__init__.py"
        assert init.exists(), f"sbt_lib/{pkg}/ is missing"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc, f"sbt_lib/{pkg}/__init__.py must say what lives there and what it may import"


def test_every_import_points_down_the_layers():
    wrong = [f"{f}:{line}: {src} imports {dst}" for f, line, src, dst in edges()
             if dst != src and dst not in MAY_IMPORT[src]]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_checker_sees_a_reverse_edge(tmp_path):
    """The check itself can fail: a models/ file importing the workbook inside a function is reported."""
    fake = tmp_path / "sbt_lib"
    (fake / "models").mkdir(parents=True)
    (fake / "workbook").mkdir()
    (fake / "models" / "bad.py").write_text("def f():\n    from ..workbook import scales\n")
    assert edges(fake) == [("models/bad.py", 2, "models", "workbook")]


def design_layers(text: str) -> dict[str, set[str]]:
    """The layer table of docs/design.md: ``| `layer` | holds | may import |`` → {layer: may import}."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|.*\| ([^|]+) \|$", section, re.M)
    return {name: {w for w in re.findall(r"\b(\w+)\b", cell) if w in MAY_IMPORT} for name, cell in rows}


def test_the_design_page_lists_every_layer_with_what_it_may_import():
    layers = design_layers(DESIGN.read_text())
    assert layers == MAY_IMPORT, "docs/design.md's layer table and MAY_IMPORT disagree"
    packages = {p.name for p in LIB.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(MAY_IMPORT) - {"top"}, "a subpackage the design page (and MAY_IMPORT) does not know"


def _defines(path: Path, name: str) -> bool:
    """Whether module ``path`` defines ``name`` at its top level (``Class.method`` inside a class)."""
    tree = ast.parse(path.read_text())
    first, _, member = name.partition(".")
    for node in tree.body:
        names = ([t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else
                 [node.target.id] if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else
                 [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) else [])
        if first in names:
            return not member or any(getattr(n, "name", None) == member for n in getattr(node, "body", []))
    return False


def test_every_code_reference_of_the_design_page_exists():
    text = DESIGN.read_text()
    refs = re.findall(r"`([\w/.]+\.py)::([\w.]+)`", text)
    assert len(refs) > 40
    missing = [f"{path}::{name}" for path, name in refs
               if not (REPO / path).exists() or not _defines(REPO / path, name)]
    assert not missing, "docs/design.md cites what the code does not have:\n" + "\n".join(missing)
    paths = set(re.findall(r"`((?:sbt_lib|tests|benchmarks|notebooks)/[\w/.]+)`", text))
    assert not [p for p in paths if not (REPO / p).exists()]


@pytest.mark.parametrize("name", ["SelfBootTok", "TokenizerConfig", "Objective", "ObjectiveConfig", "TrainConfig",
                                  "load_dataset", "psnr", "ssim", "resolve"])
def test_the_main_names_are_reexported_at_the_top(name):
    import sbt_lib

    assert getattr(sbt_lib, name) is not None
    assert name in sbt_lib.__all__


# ----------------------------------------------------------------------------- inside the workbook

# The workbook's parts, by role, and the parts each may import (besides the library below the workbook).
WORKBOOK_MAY_IMPORT = {
    "config": set(),
    "report": {"config"},
    "pipeline": {"config", "report"},
    "cli": {"config", "report", "pipeline"},
}


def workbook_part(module: str) -> str | None:
    """'sbt_lib.workbook.pipeline.caches' -> 'pipeline'; 'sbt_lib.workbook' -> 'workbook'; None outside it."""
    parts = module.split(".")
    if parts[:2] != ["sbt_lib", "workbook"]:
        return None
    return parts[2] if len(parts) > 2 else "workbook"


def workbook_edges(lib: Path = LIB) -> list[tuple[str, int, str, str]]:
    """(file, line, importer part, imported part) for every import from one part of the workbook to another."""
    out = []
    for path in sorted((lib / "workbook").rglob("*.py")):
        rel = path.relative_to(lib / "workbook")
        src = rel.parts[0] if len(rel.parts) > 1 else "workbook"
        for line, module in imported_modules(path, lib):
            dst = workbook_part(module)
            if dst is not None and dst != src:
                out.append((str(path.relative_to(lib)), line, src, dst))
    return out


def workbook_reverse_edges(lib: Path = LIB) -> list[str]:
    return [f"{f}:{line}: {src} imports {dst}" for f, line, src, dst in workbook_edges(lib)
            if dst not in WORKBOOK_MAY_IMPORT.get(src, set())]


def test_the_workbook_has_the_parts_of_the_design():
    workbook = LIB / "workbook"
    parts = {p.name for p in workbook.iterdir() if (p / "__init__.py").exists()}
    assert parts == set(WORKBOOK_MAY_IMPORT), "a workbook part the design page (and WORKBOOK_MAY_IMPORT) does not know"
    loose = sorted(p.name for p in workbook.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"every workbook module lives in one of its parts, not in sbt_lib/workbook/: {loose}"
    for part in parts:
        doc = ast.get_docstring(ast.parse((workbook / part / "__init__.py").read_text())) or ""
        assert "May import" in doc, f"sbt_lib/workbook/{part}/__init__.py must say what it holds and may import"


def test_every_workbook_import_points_down_its_parts():
    wrong = workbook_reverse_edges()
    assert not wrong, "imports against the order of the workbook's parts:\n" + "\n".join(wrong)


def test_the_checker_sees_a_reverse_edge_inside_the_workbook(tmp_path):
    """The check itself can fail: the configuration importing the pipeline inside a function, and a figure module
    importing the pipeline, are both reported; the pipeline using a table of the report is not."""
    fake = tmp_path / "sbt_lib"
    for part in ("config", "report", "pipeline"):
        (fake / "workbook" / part).mkdir(parents=True)
    (fake / "workbook" / "config" / "bad.py").write_text("def f():\n    from ..pipeline import runs\n")
    (fake / "workbook" / "report" / "bad.py").write_text("from sbt_lib.workbook.pipeline.caches import load_data\n")
    (fake / "workbook" / "pipeline" / "good.py").write_text("from ..report.tables import markdown_table\n")
    assert workbook_edges(fake) == [("workbook/config/bad.py", 2, "config", "pipeline"),
                                    ("workbook/pipeline/good.py", 1, "pipeline", "report"),
                                    ("workbook/report/bad.py", 1, "report", "pipeline")]
    assert workbook_reverse_edges(fake) == ["workbook/config/bad.py:2: config imports pipeline",
                                            "workbook/report/bad.py:1: report imports pipeline"]


def design_workbook_parts(text: str) -> dict[str, set[str]]:
    """The workbook's table in docs/design.md's *Layers*: ``| `sbt_lib/workbook/<part>/` | holds | may import |``
    → {part: may import}."""
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `sbt_lib/workbook/(\w+)/` \|.*\| ([^|]+) \|$", section, re.M)
    return {name: {w for w in re.findall(r"\b(\w+)\b", cell) if w in WORKBOOK_MAY_IMPORT} for name, cell in rows}


def test_the_design_page_lists_every_workbook_part_with_what_it_may_import():
    assert design_workbook_parts(DESIGN.read_text()) == WORKBOOK_MAY_IMPORT, \
        "docs/design.md's table of the workbook's parts and WORKBOOK_MAY_IMPORT disagree"
