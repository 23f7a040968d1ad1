"""The tokenizer objective (paper Eq. 4-5) and its terms: perceptual, adversarial, REPA to frozen
teachers, and entropic OT (Sinkhorn) to the latents of a 2D VAE.  The objective declares the frozen inputs its
terms read (:meth:`~sbt_lib.objective.objective.ObjectiveConfig.frozen_inputs`); the pipeline makes them.

May import: the top level, ``data`` and ``models``.
"""
