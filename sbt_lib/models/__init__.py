"""Models: transformer blocks, SoftVQ, the local aligners, the SelfBootTok tokenizer, the linear code
(PCA, an anchor), the 2D VAE of the OT term, the discriminator, the frozen pretrained encoders (teachers,
LPIPS), and the generator: SiT over the global tokens, the class-conditional Gaussian (its anchor) and a
mixture of Gaussians per class (how far the tokens are from Gaussian).

May import: the top level of ``sbt_lib``.
"""
