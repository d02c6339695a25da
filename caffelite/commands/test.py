"""Score a model, as ``caffe test``: ``caffelite test --model M --weights W [--iterations N] [--phase TEST]``.

Logs ``Batch <i>, <output> = <v>`` for every output value of every batch, then ``Loss: <mean loss>`` and
``<output> = <mean>`` (with `` (* w = w·mean loss)`` for loss outputs), in Caffe's format.

caffe-jacinto's flags (docs/jacinto-spec.md §i): ``--optimize_net`` folds BatchNorm/Scale into the convolutions before
scoring (§b.8, the same folding as ``caffelite optimize``); ``--output_model PREFIX`` writes the scored net as
``PREFIX.prototxt`` + ``PREFIX.caffemodel`` (folded when optimized, with the quantization parameters when the
net quantizes, as jacinto writes them); ``--display_sparsity`` logs the weights' sparsity after scoring.
Beyond jacinto: ``--quant-ranges freeze|save FILE|load FILE`` (see ``caffelite test --help``).
"""

from __future__ import annotations

from .. import log as glog
from ..errors import CaffeliteError
from .caffe_flags import add_bool_flag, add_net_flags, add_quant_ranges, apply_quant_ranges, build_net, \
    progress_bar, stages
from ..solvers.display import loss_msg


def add_arguments(p):
    add_net_flags(p, phase="TEST", weights_help="the trained weights (caffemodel; comma-separated for several)",
                  iterations_help="number of batches to score")
    add_bool_flag(p, "display_sparsity", "log the weights' sparsity in caffe-jacinto's format after scoring")
    add_bool_flag(p, "optimize_net", "fold BatchNorm/Scale into the preceding convolutions before scoring "
                                     "(caffe-jacinto's flag; outputs equal within float32 rounding)")
    p.add_argument("--output_model", "--output", dest="output_model", default="",
                   help="after scoring, write the net as PREFIX.prototxt and PREFIX.caffemodel (caffe-jacinto)")
    add_quant_ranges(p)
    from .. import jacinto

    jacinto.add_version_argument(p)


def score(net, iterations):
    """Caffe's ``test()`` loop: returns (mean loss, [(output name, mean, loss weight)])."""
    from ..solvers import netutil
    glog.info(f"Running for {iterations} iterations.", "caffe.cpp:281")
    acc = netutil.ScoreSum()
    with progress_bar(iterations, unit="batch") as bar:
        for i in range(iterations):
            for name, v, _ in acc.add(net):
                glog.info(f"Batch {i}, {name} = {glog.fmt(v)}", "caffe.cpp:304")
            if bar is not None:
                bar.update(1)
    loss = acc.loss / max(iterations, 1)
    glog.info(f"Loss: {glog.fmt(loss)}", "caffe.cpp:309")
    means = acc.means()
    for name, mean, w in means:
        glog.info(f"{name} = {glog.fmt(mean)}{loss_msg(w, mean)}", "caffe.cpp:321")
    return loss, means


def close_net(net):
    """Stop the background readers of ``net``'s data layers."""
    for layer in net.layers:
        if hasattr(layer, "close"):
            layer.close()


def optimize_net(net, model_param, phase, level, stages):
    """caffe-jacinto's ``--optimize_net``: a new Net with BatchNorm/Scale folded into the convolutions
    (docs/jacinto-spec.md §b.8); returns ``(net, model_param)`` of the folded net."""
    from ..jacinto.bn_fold import fold_batchnorm
    from ..net import Net
    new_model, new_weights, folded = fold_batchnorm(net, model_param)
    glog.info(f"Optimizing net: folded BatchNorm into {len(folded)} convolution(s)", "caffe.cpp:298")
    close_net(net)
    folded_net = Net(new_model, phase, level=level, stages=stages)
    folded_net.copy_from(new_weights)
    return folded_net, new_model


def write_model(net, model_param, prefix):
    """``--output_model``: ``PREFIX.prototxt`` (no blobs) and ``PREFIX.caffemodel`` (quantization params too)."""
    from .. import io
    from ..jacinto import quantized_net_proto
    from ..proto import caffe_pb2
    from .optimize import output_paths
    proto_path, weights_path = output_paths(prefix)
    text = caffe_pb2.NetParameter()
    text.CopyFrom(model_param)
    for lp in text.layer:
        del lp.blobs[:]
    io.write_text(text, proto_path, "jacinto017")
    io.write_weights(quantized_net_proto(net), weights_path, form="jacinto")
    glog.info(f"Wrote {proto_path} and {weights_path}", "caffe.cpp:347")


def run(args) -> int:
    if not args.model:
        raise CaffeliteError("Need a model definition to score.")
    if not args.weights:
        raise CaffeliteError("Need model weights to score.")
    net, model_param = build_net(args, "test", "score")
    if args.optimize_net:
        net, model_param = optimize_net(net, model_param, net.phase, args.level, stages(args.stage))
    try:
        from .. import jacinto

        hooks = jacinto.attach_from_proto(net, None, version=getattr(args, "jacinto_version", None))
        finish_ranges = apply_quant_ranges(hooks, args.quant_ranges)
        score(net, args.iterations)
        finish_ranges()
        if args.display_sparsity:
            from ..jacinto import display_sparsity
            glog.info("=========================", "caffe.cpp:326")
            glog.info("Sparsity of the test net:", "caffe.cpp:327")
            display_sparsity(net)
            glog.info("=========================", "caffe.cpp:343")
        if args.output_model:
            write_model(net, model_param, args.output_model)
    finally:
        close_net(net)
    return 0
