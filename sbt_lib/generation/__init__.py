"""Generation (paper §3.2, §4): flow matching over the global tokens, split as SiT's ``transport/`` is —
``path`` (the linear interpolant and its velocity), ``transport`` (time sampling, the training loss, token
normalisation), ``samplers`` (Euler, Heun, dopri5 through torchdiffeq, Euler–Maruyama, classifier-free
guidance).  The SiT network itself is a model: :mod:`sbt_lib.models.sit`.

May import: the top level and ``models``.
"""
