"""What the notebooks run: a run's data and the caches computed from it, the tokenizer's trainers (stage 1, stage 2,
decoder sides on a base, the refiner), the generator (trained on cached tokens, sampled, decoded), sweeps of variants
over seeds and the process pool they train in, the studies (comparisons of tokenizers and generators, the
convergence study, the OT solver benchmark), the shipped base tokenizer and generator, and the run folders.

May import: the library below the workbook, ``workbook.config`` and ``workbook.report`` (a sweep's summary table, a
study's figure); not ``workbook.cli`` (``tests/test_layout.py``).
"""
