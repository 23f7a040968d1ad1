"""The workbook: scales and typed parameters, builders from parameters, analysis helpers, run folders,
ablations over seeds, figures, and the papermill runner behind ``python -m sbt_lib``.

May import: everything in ``sbt_lib``.  Nothing in ``sbt_lib`` imports it.
"""
