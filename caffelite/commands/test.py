"""Score a model, as ``caffe test``: ``caffelite test --model M --weights W [--iterations N] [--phase TEST]``.

Logs ``Batch <i>, <output> = <v>`` for every output value of every batch, then ``Loss: <mean loss>`` and
``<output> = <mean>`` (with `` (* w = w·mean loss)`` for loss outputs), in Caffe's format.
"""

from __future__ import annotations

import numpy as np

from .. import log as glog
from ..errors import CaffeliteError
from .train import attach_jacinto, parse_gpus, select_device


def add_arguments(p):
    p.add_argument("--model", default="", help="the net definition prototxt")
    p.add_argument("--weights", default="", help="the trained weights (caffemodel; comma-separated for several)")
    p.add_argument("--iterations", type=int, default=50, help="number of batches to score (default 50)")
    p.add_argument("--phase", default="TEST", type=str.upper, choices=("TRAIN", "TEST"),
                   help="net phase (default TEST)")
    p.add_argument("--gpu", default="", help="GPU id to use; CPU when empty")
    p.add_argument("--level", type=int, default=0, help="the NetState level")
    p.add_argument("--stage", default="", help="NetState stages, comma-separated")
    p.add_argument("--display_sparsity", action="store_true",
                   help="log the weights' sparsity in caffe-jacinto's format after scoring")


def score(net, iterations):
    """Caffe's ``test()`` loop: returns (mean loss, [(output name, mean, loss weight)])."""
    from ..solvers import netutil
    glog.info(f"Running for {iterations} iterations.", "caffe.cpp:281")
    scores, names, weights, loss = None, [], [], 0.0
    for i in range(iterations):
        iter_loss = float(netutil.forward(net))
        loss += iter_loss
        res = netutil.output_scores(net)
        vals = np.array([v for _, v, _ in res], dtype=np.float32)
        for name, v, _ in res:
            glog.info(f"Batch {i}, {name} = {glog.fmt(v)}", "caffe.cpp:304")
        if scores is None:
            scores, names, weights = vals, [r[0] for r in res], [r[2] for r in res]
        else:
            scores = scores + vals
    loss /= max(iterations, 1)
    glog.info(f"Loss: {glog.fmt(loss)}", "caffe.cpp:309")
    out = []
    for j, (name, w) in enumerate(zip(names, weights, strict=True)):
        mean = float(scores[j] / np.float32(iterations))
        msg = f" (* {glog.fmt(w)} = {glog.fmt(np.float32(w) * np.float32(mean))} loss)" if w else ""
        glog.info(f"{name} = {glog.fmt(mean)}{msg}", "caffe.cpp:321")
        out.append((name, mean, w))
    return loss, out


def run(args) -> int:
    from ..net import Net

    if not args.model:
        raise CaffeliteError("Need a model definition to score.")
    if not args.weights:
        raise CaffeliteError("Need model weights to score.")
    if args.iterations <= 0:
        raise CaffeliteError("--iterations must be positive")
    select_device(parse_gpus(args.gpu), command="test")
    phase = 0 if args.phase == "TRAIN" else 1
    stages = [s for s in args.stage.split(",") if s]
    net = Net(args.model, phase, level=args.level, stages=stages)
    for w in [w for w in args.weights.split(",") if w]:
        net.copy_from(w)
    attach_jacinto(net)
    score(net, args.iterations)
    if args.display_sparsity:
        from ..jacinto import display_sparsity
        glog.info("=========================", "caffe.cpp:326")
        glog.info("Sparsity of the test net:", "caffe.cpp:327")
        display_sparsity(net)
    return 0
