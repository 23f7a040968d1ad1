"""What the workbook shows: figures (``viz``, ``viz_ot``), markdown tables (``tables``), what a trained tokenizer
carries and costs (``analysis``: its groups' tokens, decodes with groups removed, linear probes, parameters and
FLOPs), results over paired seeds and their verdicts (``seed_stats``), the convergence study's verdicts, report and
figure (``convergence``), and the results page ``RESULTS.md`` written from the run folders' files (``results_page``).  These take
models, tensors and the pipeline's rows and records as plain values; they train nothing and know no run folder's
layout beyond the files they read.

May import: the library below the workbook and ``workbook.config``; not ``workbook.pipeline`` nor
``workbook.cli`` (``tests/test_layout.py``).  The pipeline may import it (a sweep's summary table, a study's figure).
"""
