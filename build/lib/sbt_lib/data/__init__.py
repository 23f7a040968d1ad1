"""Data: the built-in sets (photos, shapes), CIFAR-10 and ImageFolder datasets held in memory, and the
per-image feature caches of frozen encoders.

May import: the top level of ``sbt_lib`` only (``config``, ``files``, ``batch``, ``weights``, ``checkpoint``).
"""
