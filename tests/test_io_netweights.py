"""A Net's weights go through the streaming readers/writers: ``Net(deploy, weights)`` reads each value once
into the net's blobs (``io.load_weights(lazy=True)``), ``net.save`` streams the blobs (``io.write_weights``
with ``arrays=``). Both must give exactly what the message route (read_weights / to_proto) gives."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import caffelite
from caffelite import io
from caffelite.io.weights import LazyBlob
from caffelite.io.netweights import to_proto
from conftest import FIXTURES

CIFAR = os.path.join(FIXTURES, "nets", "cifar10_quick")
DEPLOY, WEIGHTS = os.path.join(CIFAR, "deploy.prototxt"), os.path.join(CIFAR, "weights.caffemodel")


def _params(net):
    return {name: [np.array(b.data) for b in blobs] for name, blobs in net.params.items()}


def test_net_load_streams_the_same_values_as_the_message_route():
    streamed = caffelite.Net(DEPLOY, WEIGHTS, caffelite.TEST)
    via_msg = caffelite.Net(DEPLOY, caffelite.TEST)
    via_msg.copy_from(io.read_weights(WEIGHTS))  # a NetParameter with values: decoded from its blobs
    a, b = _params(streamed), _params(via_msg)
    assert a.keys() == b.keys() and len(a) >= 4
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            np.testing.assert_array_equal(x, y)
    ref = {l.name: [io.blob_to_array(bp) for bp in l.blobs] for l in io.read_weights(WEIGHTS).layer}
    np.testing.assert_array_equal(a["conv1"][0], ref["conv1"][0])


def test_lazy_load_reads_into_the_given_memory():
    _, _, eager = io.load_weights(WEIGHTS)
    _, _, lazy = io.load_weights(WEIGHTS, lazy=True)
    assert eager.keys() == lazy.keys()
    for name, blobs in lazy.items():
        for e, l in zip(eager[name], blobs, strict=True):
            assert isinstance(l, LazyBlob) and l.shape == e.shape and l.size == e.size
            np.testing.assert_array_equal(l.read(), e)
            out = np.empty(e.shape, np.float32)
            assert l.read(out) is out  # straight into the target
            np.testing.assert_array_equal(out, e)
            out64 = np.empty(e.size, np.float64)  # another dtype / shape of the same count: converted
            np.testing.assert_array_equal(l.read(out64), e.reshape(-1).astype(np.float64))


def test_lazy_blob_notices_a_file_that_shrank(tmp_path):
    p = tmp_path / "w.caffemodel"
    p.write_bytes(open(WEIGHTS, "rb").read())
    _, _, lazy = io.load_weights(str(p), lazy=True)
    p.write_bytes(b"")
    with pytest.raises(caffelite.errors.FileFormatError, match="truncated"):
        lazy["conv1"][0].read()


@pytest.mark.parametrize("form", ["jacinto", "bvlc"])
@pytest.mark.parametrize("write_diff", [False, True])
def test_net_save_streams_the_bytes_of_to_proto(tmp_path, form, write_diff):
    net = caffelite.Net(DEPLOY, WEIGHTS, caffelite.TEST)
    rng = np.random.default_rng(0)
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = rng.standard_normal(b.shape).astype(np.float32)
    p = tmp_path / "saved.caffemodel"
    net.save(str(p), form=form, write_diff=write_diff)
    assert p.read_bytes() == to_proto(net, form, write_diff).SerializeToString()
    back = caffelite.Net(DEPLOY, str(p), caffelite.TEST)
    for name, blobs in _params(net).items():
        for x, y in zip(blobs, _params(back)[name], strict=True):
            np.testing.assert_array_equal(x, y)


def test_net_load_peak_memory_is_about_the_net(tmp_path):
    """Loading weights into a built net costs well under the file size on top of the net itself."""
    deploy = tmp_path / "fc.prototxt"
    deploy.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2048 } } }\n'
                      'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                      'inner_product_param { num_output: 4096 } }\n')
    weights = tmp_path / "fc.caffemodel"
    net = caffelite.Net(str(deploy), caffelite.TEST)
    net.params["fc"][0].data[...] = 0.5
    net.save(str(weights))
    size = os.path.getsize(weights)
    assert size > 32e6
    code = f"""
import caffelite
def mem(k):
    for line in open('/proc/self/status'):
        if line.startswith(k):
            return int(line.split()[1]) * 1024
net = caffelite.Net({str(deploy)!r}, caffelite.TEST)
open('/proc/self/clear_refs', 'w').write('5')
base = mem('VmRSS')
net.copy_from({str(weights)!r})
assert float(net.params['fc'][0].data[0, 0]) == 0.5
print((mem('VmHWM') - base) / {size})
"""
    try:
        ratio = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                     text=True).stdout.split()[-1])
    except subprocess.CalledProcessError as e:  # no clear_refs (not Linux): nothing to measure
        pytest.skip(f"cannot measure peak memory here: {e.stderr.strip().splitlines()[-1]}")
    assert ratio < 0.25, f"copy_from used {ratio:.2f}x the file on top of the net"


def test_quantizing_net_is_saved_under_jacintos_quantized_name(tmp_path):
    """caffe-jacinto 0.17 (spec §h) names a quantizing net's caffemodel "<name>___QUANTIZED__SEE_END_OFTHE_FILE"."""
    import caffelite
    from caffelite import io as cio

    text = ('name: "qnet"\nquantize: true\nlayer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'
            'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    proto = tmp_path / "q.prototxt"
    proto.write_text(text)
    net = caffelite.Net(str(proto), caffelite.TEST)
    net.save(str(tmp_path / "q.caffemodel"))
    saved = cio.read_weights(str(tmp_path / "q.caffemodel"))
    assert saved.name == "qnet___QUANTIZED__SEE_END_OFTHE_FILE" and saved.quantize
    plain = tmp_path / "p.prototxt"
    plain.write_text(text.replace("quantize: true\n", ""))
    caffelite.Net(str(plain), caffelite.TEST).save(str(tmp_path / "p.caffemodel"))
    assert cio.read_weights(str(tmp_path / "p.caffemodel")).name == "qnet"
