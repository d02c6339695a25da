"""The Net's public graph API, and the rule that code outside the Net reads the wiring only through it."""

from __future__ import annotations

import pathlib
import re

import caffelite as caffe

NET = """
name: "g"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "r" type: "ReLU" bottom: "y" top: "y" }
layer { name: "p" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "l" type: "EuclideanLoss" bottom: "z" bottom: "z" top: "loss" propagate_down: true propagate_down: false }
"""

_FIELDS = (r"(bottom_ids|top_ids|bottom_vecs|top_vecs|param|layer_names|loss_tops|bottom_need_backward|"
           r"layer_need_backward|blob_need_backward|input_names)")
#: ``net._top_ids`` and ``getattr(net, "_top_ids", ...)`` alike
PRIVATE = re.compile(r"\bnet\._" + _FIELDS + r"\b|getattr\(\s*net\s*,\s*[\"']_" + _FIELDS + r"[\"']")


def _net(tmp_path):
    p = tmp_path / "g.prototxt"
    p.write_text(NET)
    return caffe.Net(str(p), caffe.TRAIN)


def test_graph_api_describes_the_wiring(tmp_path):
    net = _net(tmp_path)
    names = [net.layer_name(i) for i in range(len(net.layers))]
    assert names[:3] == ["in", "c", "r"] and "p" in names and names[-1] == "l"
    i = names.index("r")
    assert net.bottom_ids(i) == ["y"] and net.top_ids(i) == ["y"]
    assert net.bottom_vecs(i)[0] is net.blobs["y"] and net.top_vecs(i)[0] is net.blobs["y"]
    c = names.index("c")
    assert net.bottom_ids(c) == ["x"] and net.top_vecs(c)[0].shape == (2, 4, 4, 4)
    loss = names.index("l")
    assert net.loss_tops(loss) == [(0, 1.0)] and net.loss_tops(c) == []
    assert net.bottom_need_backward(loss) == [True, False]
    assert net.net_param.name == "g" and [lp.name for lp in net.net_param.layer] == names


def test_no_library_module_reads_the_nets_private_wiring():
    root = pathlib.Path(caffe.__file__).parent
    offenders = []
    for f in sorted(root.rglob("*.py")):
        if f.name in ("net.py", "net_mixins.py"):
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if PRIVATE.search(line):
                offenders.append(f"{f.relative_to(root)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
