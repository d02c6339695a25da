"""Fold BatchNorm/Scale into the preceding convolutions (caffe-jacinto's ``caffe optimize``, docs/jacinto-spec.md §b.8).

Writes ``<dir>/<stem>.prototxt`` (the net, without blobs) and ``<dir>/<stem>.caffemodel`` for
``--output_model <dir>/<stem>[.caffemodel|.prototxt]``. The folded net's outputs equal the original's within
float32 rounding. ``--remove_bn`` drops the folded BatchNorm/Scale layers instead of leaving identities.
"""

from __future__ import annotations

import os


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="net prototxt (deploy or test)")
    parser.add_argument("--weights", required=True, help="caffemodel (.xz accepted)")
    parser.add_argument("--output_model", "--output", dest="output_model", required=True,
                        help="output prefix: writes <prefix>.prototxt and <prefix>.caffemodel")
    parser.add_argument("--remove_bn", action="store_true",
                        help="remove the folded BatchNorm/Scale layers (jacinto keeps them as identities)")
    parser.add_argument("--phase", default="TEST", choices=("TRAIN", "TEST"), help="net phase (default TEST)")
    parser.add_argument("--format", default="jacinto", choices=("jacinto", "bvlc"),
                        help="dialect of the written files (default jacinto)")


def output_paths(prefix):
    """``(prototxt, caffemodel)`` paths for an --output_model value (a known extension is stripped)."""
    for ext in (".caffemodel", ".prototxt"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return prefix + ".prototxt", prefix + ".caffemodel"


def optimize(model, weights, output_model, remove_bn=False, phase="TEST", form="jacinto"):
    """Load, fold, write; returns ``(prototxt path, caffemodel path, folded conv names)``."""
    from .. import io
    from .. import log as glog
    from ..jacinto.bn_fold import fold_batchnorm
    from ..layer import TEST, TRAIN
    from ..net import Net

    model_param = io.read_net(model)
    net = Net(model_param, TRAIN if phase == "TRAIN" else TEST)
    net.copy_from(weights)
    new_model, new_weights, folded = fold_batchnorm(net, model_param, remove=remove_bn)
    proto_path, weights_path = output_paths(output_model)
    d = os.path.dirname(proto_path)
    if d:
        os.makedirs(d, exist_ok=True)
    if form == "bvlc":  # BVLC has no 5-blob BatchNorm: split into BatchNorm + Scale (docs/jacinto-spec.md §d.5)
        from ..io.batchnorm import jacinto_bn_to_bvlc
        jacinto_bn_to_bvlc(new_model)
        jacinto_bn_to_bvlc(new_weights)
    io.write_text(new_model, proto_path, "bvlc" if form == "bvlc" else "jacinto017")
    io.write_weights(new_weights, weights_path, form=form)
    glog.info(f"Optimized net: folded BatchNorm into {len(folded)} convolution(s); wrote {proto_path} and "
              f"{weights_path}", "caffe.cpp:380")
    return proto_path, weights_path, folded


def run(args) -> int:
    optimize(args.model, args.weights, args.output_model, args.remove_bn, args.phase, args.format)
    return 0
