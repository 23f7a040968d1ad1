"""Evaluation: PSNR/SSIM and the anchors (bicubic, PCA), FD/KID and LPIPS through torch-fidelity,
linear probes, parameter and FLOP counts, and a tokenizer's held-out reconstruction report.

May import: the top level, ``data`` and ``models``.
"""
