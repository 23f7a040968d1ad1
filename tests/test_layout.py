"""The library's layout: dependencies between subpackages point one way (DESIGN.md, issue 12).

Every ``import`` in ``sbt_lib`` is parsed (function-level imports included); an import of a
subpackage that sits at the same level or above the importer's is a reverse edge and fails here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "sbt_lib"

# Each subpackage may import the top level and the subpackages listed for it; nothing imports workbook.
MAY_IMPORT = {
    "top": set(),
    "data": {"top"},
    "models": {"top"},
    "objective": {"top", "data", "models"},
    "generation": {"top", "models"},
    "eval": {"top", "data", "models"},
    "workbook": {"top", "data", "models", "objective", "generation", "eval"},
}
ENTRY_POINTS = {"__init__.py", "__main__.py"}  # the package's face: may re-export anything


def layer(module: str, lib: Path = LIB) -> str:
    """'sbt_lib.models.tokenizer' -> 'models'; 'sbt_lib.train' -> 'top'."""
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
    for pkg in ("data", "models", "objective", "eval", "workbook"):
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


@pytest.mark.parametrize("name", ["SelfBootTok", "TokenizerConfig", "Objective", "ObjectiveConfig", "TrainConfig",
                                  "load_dataset", "psnr", "ssim", "resolve"])
def test_the_main_names_are_reexported_at_the_top(name):
    import sbt_lib

    assert getattr(sbt_lib, name) is not None
    assert name in sbt_lib.__all__
