"""Draw a net as a graph (pycaffe's ``caffe.draw``): layers as boxes, blobs as octagons, with pydot.

``draw_net_to_file(net_param, "net.png")`` renders through Graphviz's ``dot`` program; a ``.dot``/``.gv``
file name writes the graph source and needs no Graphviz. pydot is an optional dependency
(``pip install 'caffelite[draw]'``).
"""

from __future__ import annotations

import os
import shutil

from .errors import CaffeliteError
from .io.files import atomic_write

__all__ = ["get_pydot_graph", "draw_net", "draw_net_to_file", "get_layer_label", "choose_color_by_layertype",
           "get_edge_label", "get_layer_lr_mult"]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
_SOURCE_EXTS = ("dot", "gv")


def _pydot():
    try:
        import pydot
    except ImportError:
        raise CaffeliteError("drawing nets needs pydot: pip install 'caffelite[draw]'") from None
    return pydot


def get_edge_label(layer):
    """The label of the edges leaving ``layer``: the batch size of data layers, the output count of
    convolution and inner product layers, else none."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return None


def get_layer_lr_mult(layer):
    """(weight lr_mult, bias lr_mult) of a layer with params (1 when unset), else (None, None)."""
    if layer.type not in ("Convolution", "Deconvolution", "InnerProduct", "Scale", "Bias"):
        return None, None
    mults = [p.lr_mult if p.HasField("lr_mult") else 1 for p in layer.param]
    mults += [1] * (2 - len(mults))
    return mults[0], mults[1]


def _first(values, default):
    return values[0] if len(values) else default


def get_layer_label(layer, rankdir, display_lrm=False):
    """The node text of ``layer``: name and type, plus kernel/stride/pad for convolution and pooling."""
    sep = " " if rankdir in ("TB", "BT") else "\\n"
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        label = (f'"{layer.name}{sep}({layer.type}){sep}kernel size: {_first(p.kernel_size, p.kernel_h)}{sep}'
                 f'stride: {_first(p.stride, 1)}{sep}pad: {_first(p.pad, 0)}')
    elif layer.type == "Pooling":
        p = layer.pooling_param
        pool = p.DESCRIPTOR.fields_by_name["pool"].enum_type.values_by_number[p.pool].name
        label = (f'"{layer.name}{sep}(Pooling {pool}){sep}kernel size: {p.kernel_size}{sep}stride: {p.stride}'
                 f'{sep}pad: {p.pad}')
    else:
        label = f'"{layer.name}{sep}({layer.type})'
    if display_lrm:
        w, b = get_layer_lr_mult(layer)
        if w is not None:
            label += f"{sep}lr mult: {w:g}, {b:g}"
    return label + '"'


def choose_color_by_layertype(layertype):
    """Node colour by type, as pycaffe's drawing."""
    return {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
            "InnerProduct": "#CC33FF"}.get(layertype, "#6495ED")


def _included(layer, phase):
    if phase is None:
        return True
    inc = [r.phase for r in layer.include if r.HasField("phase")]
    exc = [r.phase for r in layer.exclude if r.HasField("phase")]
    if layer.HasField("phase") and layer.phase != phase:
        return False
    if inc:
        return phase in inc
    return phase not in exc


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """A ``pydot.Dot`` graph of the NetParameter ``caffe_net``; ``phase`` (TRAIN/TEST) keeps only the layers
    of that phase, ``None`` all of them."""
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name if caffe_net.name else "Net", graph_type="digraph", rankdir=rankdir)
    nodes, edges = {}, []
    for layer in caffe_net.layer:
        if not _included(layer, phase):
            continue
        key = f"{layer.name}_{layer.type}"
        style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        nodes[key] = pydot.Node(key, label=get_layer_label(layer, rankdir, display_lrm), **style)
        for b in layer.bottom:
            nodes.setdefault(f"{b}_blob", pydot.Node(f"{b}_blob", label=f'"{b}"', **BLOB_STYLE))
            edges.append((f"{b}_blob", key, None))
        for t in layer.top:
            nodes.setdefault(f"{t}_blob", pydot.Node(f"{t}_blob", label=f'"{t}"', **BLOB_STYLE))
            edges.append((key, f"{t}_blob", get_edge_label(layer) if label_edges else None))
    for node in nodes.values():
        graph.add_node(node)
    for src, dst, label in edges:
        kw = {"label": f'"{label}"'} if label else {}
        graph.add_edge(pydot.Edge(nodes[src], nodes[dst], **kw))
    return graph


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The image (bytes) of the net in format ``ext`` (``png``, ``svg``, ``pdf``... through Graphviz, or
    ``dot``/``gv``: the graph source)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    if ext in _SOURCE_EXTS:
        return graph.to_string().encode()
    if shutil.which("dot") is None:
        raise CaffeliteError(f"rendering a net to .{ext} needs Graphviz's 'dot' program (e.g. apt-get install "
                             f"graphviz); a .dot or .gv output file needs no Graphviz")
    return graph.create(format=ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Write the drawing of the net to ``filename``; its extension picks the format."""
    ext = os.path.splitext(os.fspath(filename))[1].lstrip(".").lower() or "png"
    atomic_write(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
