"""sbt_lib — the library behind the SelfBootTok workbook.

One concept per module:

- data and models: ``data`` (datasets, batches), ``quantizer`` (SoftVQ, its regularisers),
  ``tokenizer`` (encoder, fusion, decoder, the SelfBootTok model), ``aligners`` (the local 1D MLP
  and 2D causal aligners), ``blocks``, ``vae2d`` (the 2D VAE of the OT term), ``discriminator``;
- the objective (Eq. 4-5): ``losses`` (the ``Objective``), ``perceptual``, ``adversarial`` (hinge,
  LeCAM, DiffAugment, bCR, adaptive weight), ``repa`` (alignment to frozen teachers), ``ot``
  (batched Sinkhorn and the OT alignment term), ``teachers`` (frozen pretrained encoders),
  ``weights`` (the one weight resolver), ``features`` (per-image feature caches);
- training and measuring: ``train`` (the training engine), ``checkpoint``, ``metrics`` (PSNR,
  SSIM, bicubic), ``feature_metrics`` (FID/KID or FD-EffNet through torch-fidelity, LPIPS),
  ``flops``, ``probes``, ``ot_benchmark``;
- the workbook: ``scales`` (named parameter bundles), ``experiments`` (the steps notebooks share),
  ``ablations`` (variants over seeds), ``viz`` and ``viz_ot`` (figures), ``reproduce`` (the papermill
  runner behind ``python -m sbt_lib``).
"""
__version__ = "0.1.0"
