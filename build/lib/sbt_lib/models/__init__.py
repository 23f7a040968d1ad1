"""Models: transformer blocks, SoftVQ, the local aligners, the SelfBootTok tokenizer, the linear code
(PCA) it starts from, the 2D VAE of the OT term, the discriminator, and the frozen pretrained encoders
(teachers, LPIPS).  The generator joins here.

May import: the top level of ``sbt_lib``.
"""
