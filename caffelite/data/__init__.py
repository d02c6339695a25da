"""Data: Datum records, LMDB reading/writing (and BVLC's convert_imageset), image lists and decoding, Caffe's
DataTransformer, background prefetching, the data layers' base class and image resizing ops. The Cityscapes
segmentation tooling built on it lives in :mod:`caffelite.segmentation`.

Submodules are imported on use so ``import caffelite.data`` stays light.
"""

from ..errors import CaffeliteError


class DatasetError(CaffeliteError, ValueError):
    """A dataset folder or list that cannot be used (missing folders, unpaired files, bad label ids)."""
