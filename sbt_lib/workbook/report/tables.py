"""Markdown tables for the notebooks: one function that lays out a header and rows, used by every
table the workbook prints (ablation summaries, solver comparisons, probes, costs)."""
from __future__ import annotations


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table of ``header`` and ``rows`` (cells already formatted, or anything ``str`` takes)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std`` at ``digits`` decimals."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
