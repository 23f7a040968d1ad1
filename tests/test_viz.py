"""Figures: what a reader sees on the axes."""
import matplotlib

matplotlib.use("Agg")

from sbt_lib.workbook.report import viz  # noqa: E402


def test_a_log_axis_is_labelled_with_plain_numbers(tmp_path):
    fig = viz.metric_lines({"euler": [(4, 396.0), (12, 402.0)], "dopri5": [(62, 408.0)]},
                           "function evaluations (NFE)", "gFD", tmp_path / "samplers.png", logx=True)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    visible = [t for t, x in zip(labels, ax.get_xticks()) if 4 <= x <= 62]
    assert visible == ["5", "10", "20", "50"], labels  # 1-2-5 ticks, no 4×10⁰ / 6×10⁰ mantissas
    assert (tmp_path / "samplers.png").stat().st_size > 1000


# --- the widget explorers: sliders in a live kernel, their first state as a figure in headless runs -----------

import IPython.display  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sbt_lib.workbook.report import viz_ot  # noqa: E402


@pytest.fixture
def shown(monkeypatch):
    """The figures the explorers display (IPython's ``display`` recorded instead of printed)."""
    figures = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, *a, **k: figures.append(obj))
    return figures


def _explorer(name, model):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    if name == "group":
        return viz.group_explorer(model, images)
    if name == "epsilon":
        return viz_ot.epsilon_explorer(torch.rand(16, 4, generator=torch.Generator().manual_seed(0)), images[0], 4,
                                       [0, 1])
    return viz.generation_explorer(lambda k, s, sampler, n, seed: images, ["a", "b"])


def _widgets(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _widgets(child)


@pytest.mark.parametrize("name", ["group", "epsilon", "generation"])
def test_an_explorer_redraws_when_its_slider_moves(tiny_model, monkeypatch, shown, name):
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    monkeypatch.delenv("SBT_HEADLESS", raising=False)
    box = _explorer(name, tiny_model)
    figures = [f for f in shown if isinstance(f, Figure)]
    assert isinstance(box, widgets.Widget) and box in shown and figures  # the panel and its first state
    slider = next(w for w in _widgets(box) if isinstance(w, (widgets.FloatSlider, widgets.FloatLogSlider)))
    slider.value = slider.max  # what a reader's drag does
    assert len([f for f in shown if isinstance(f, Figure)]) == 2 * len(figures)  # drawn again


@pytest.mark.parametrize("name", ["group", "epsilon", "generation"])
def test_a_headless_explorer_draws_its_first_state_without_widgets(tiny_model, monkeypatch, shown, name):
    from matplotlib.figure import Figure

    monkeypatch.setenv("SBT_HEADLESS", "1")
    assert _explorer(name, tiny_model) is None
    assert shown and all(isinstance(f, Figure) for f in shown)


def test_the_runner_runs_its_kernels_headless_and_restores_the_environment(tmp_path, monkeypatch):
    import os

    from sbt_lib.workbook.cli import runner

    seen = {}
    monkeypatch.delenv("SBT_HEADLESS", raising=False)
    monkeypatch.setattr(runner.pm, "execute_notebook", lambda *a, **k: seen.update(env=os.environ.get("SBT_HEADLESS")))
    assert runner.run_notebook(runner.NOTEBOOK_DIR / "03_ot_alignment.ipynb", tmp_path, {}) == {}
    assert seen["env"] == "1" and "SBT_HEADLESS" not in os.environ
