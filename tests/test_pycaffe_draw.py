"""caffelite.draw (pycaffe's caffe.draw) and ``caffelite draw``: the pydot graph and its dot source, which
need no Graphviz; rendering to an image needs Graphviz's ``dot`` and says so when it is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pydot = pytest.importorskip("pydot")

import caffelite  # noqa: E402
from caffelite import draw  # noqa: E402
from caffelite import io as cio  # noqa: E402
from caffelite.errors import CaffeliteError  # noqa: E402

NET = """
name: "drawme"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" include { phase: TRAIN } }
"""


@pytest.fixture()
def net_param(tmp_path):
    p = tmp_path / "net.prototxt"
    p.write_text(NET)
    return cio.read_net(str(p)), p


def test_graph_nodes_edges_and_labels(net_param):
    net, _ = net_param
    g = draw.get_pydot_graph(net, "LR")
    names = {n.get_name().strip('"') for n in g.get_nodes()}
    assert {"conv1_Convolution", "pool1_Pooling", "ip_InnerProduct", "data_blob", "conv1_blob", "pool1_blob"} <= names
    edges = {(e.get_source().strip('"'), e.get_destination().strip('"')) for e in g.get_edges()}
    assert ("data_blob", "conv1_Convolution") in edges and ("conv1_Convolution", "conv1_blob") in edges
    src = g.to_string()
    assert "kernel size: 3" in src and "(Pooling MAX)" in src and "#FF5050" in src
    conv = next(n for n in g.get_nodes() if n.get_name().strip('"') == "conv1_Convolution")
    assert "\\n" in conv.get("label")  # LR graphs break labels into lines
    tb = draw.get_pydot_graph(net, "TB", display_lrm=True).to_string()
    assert "lr mult: 1, 2" in tb


def test_phase_filter(net_param):
    net, _ = net_param
    assert "drop_Dropout" in draw.get_pydot_graph(net, "LR", phase=caffelite.TRAIN).to_string()
    assert "drop_Dropout" not in draw.get_pydot_graph(net, "LR", phase=caffelite.TEST).to_string()


def test_draw_to_dot_file_and_png(net_param, tmp_path):
    net, _ = net_param
    out = tmp_path / "net.dot"
    draw.draw_net_to_file(net, str(out))
    assert out.read_text().startswith("digraph")
    if shutil.which("dot") is None:
        with pytest.raises(CaffeliteError, match="needs Graphviz's 'dot' program"):
            draw.draw_net_to_file(net, str(tmp_path / "net.png"))
    else:
        draw.draw_net_to_file(net, str(tmp_path / "net.png"))
        assert (tmp_path / "net.png").read_bytes()[:4] == b"\x89PNG"


def test_draw_command(net_param, tmp_path):
    _, path = net_param
    r = subprocess.run([sys.executable, "-m", "caffelite", "draw", str(path), str(tmp_path / "o.gv"),
                        "--rankdir", "TB", "--phase", "TEST"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Drawing net to" in r.stdout
    src = (tmp_path / "o.gv").read_text()
    assert "rankdir=TB" in src and "drop_Dropout" not in src
