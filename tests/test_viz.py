"""Figures: what a reader sees on the axes."""
import matplotlib

matplotlib.use("Agg")

from sbt_lib.workbook import viz  # noqa: E402


def test_a_log_axis_is_labelled_with_plain_numbers(tmp_path):
    fig = viz.metric_lines({"euler": [(4, 396.0), (12, 402.0)], "dopri5": [(62, 408.0)]},
                           "function evaluations (NFE)", "gFD", tmp_path / "samplers.png", logx=True)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    visible = [t for t, x in zip(labels, ax.get_xticks()) if 4 <= x <= 62]
    assert visible == ["5", "10", "20", "50"], labels  # 1-2-5 ticks, no 4×10⁰ / 6×10⁰ mantissas
    assert (tmp_path / "samplers.png").stat().st_size > 1000
