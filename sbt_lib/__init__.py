"""sbt_lib — the library behind the SelfBootTok workbook.

One concept per module: ``data`` (datasets), ``quantizer`` (SoftVQ), ``tokenizer`` (encoder,
decoder, the SelfBootTok model), ``aligners`` (the local 1D MLP and 2D causal aligners),
``losses``, ``train`` (the training engine), ``checkpoint``, ``metrics``, ``viz`` (figures),
``scales`` (named parameter bundles), ``experiments`` (the steps notebooks share) and
``reproduce`` (the papermill runner behind ``python -m sbt_lib``).
"""
__version__ = "0.1.0"
