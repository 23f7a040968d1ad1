"""The workbook's configuration: the named bundles of defaults per notebook and scale (``scales``) and the
typed parameters one notebook run is configured by, resolved from a bundle and the values a notebook sets
(``params``).  Nothing here runs: no data, no training, no files.

May import: the library below the workbook (top level, ``data``, ``models``, ``objective``, ...) and
itself; no other part of the workbook (``tests/test_layout.py``).
"""
