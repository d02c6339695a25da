"""Cityscapes-style semantic segmentation, the application built on :mod:`caffelite.data`: Cityscapes lists and
the 34-id -> 5-class label mapping (``cityscapes``), a synthetic Cityscapes generator (``synthetic``), paired
image/label LMDBs (``lmdbs``), inference with overlays (``infer``), segmentation metrics (``metrics``) and
``WIDTHxHEIGHT`` size parsing (``sizes``). The staged training flow that uses them is :mod:`caffelite.pipeline`.

Submodules are imported on use so ``import caffelite.segmentation`` stays light.
"""
