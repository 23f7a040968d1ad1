"""The workbook: what the notebooks and the command line call, in four parts by role, each a subpackage whose
``__init__.py`` says what it holds and what it may import; the order is ``config`` < ``report`` < ``pipeline`` <
``cli`` (``tests/test_layout.py``, ``docs/design.md``):

- ``config``: the scales' bundles of defaults and the typed parameters of a run;
- ``report``: figures, tables, what a trained tokenizer carries, and the results page;
- ``pipeline``: data and caches, trainers, the generator, sweeps and studies, the shipped models, run folders;
- ``cli``: the papermill runner and the ``train`` / ``evaluate`` commands behind ``python -m sbt_lib``.

May import: everything in ``sbt_lib``.  Nothing in ``sbt_lib`` imports it.
"""
