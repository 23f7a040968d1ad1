"""The workbook's commands behind ``python -m sbt_lib``: ``reproduce`` (the notebooks in order through papermill,
``runner``) and ``train`` / ``evaluate`` (the notebooks' training calls for the base tokenizer, stage 2 and the
reused generator, alone or under ``torchrun``, ``launch``).

May import: the library below the workbook and every other part of the workbook (``config``, ``report``,
``pipeline``); nothing in the workbook imports it (``tests/test_layout.py``).
"""
