"""The tokenizer objective (paper Eq. 4-5) and its terms: perceptual, adversarial, REPA to frozen
teachers, and entropic OT (Sinkhorn) to the latents of a 2D VAE trained for it.

May import: the top level, ``train`` (the 2D VAE trains through the engine), ``data`` and ``models``.
"""
