"""Data: Datum records, LMDB reading/writing, Caffe's DataTransformer, background prefetching, and the
Cityscapes tooling (lists, label mapping, LMDBs, a synthetic Cityscapes generator, metrics, inference).

Submodules are imported on use so ``import caffelite.data`` stays light.
"""
