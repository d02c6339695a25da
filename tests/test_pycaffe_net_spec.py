"""NetSpec (``from caffelite import layers as L, params as P``) and coord_map, as pycaffe's."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

import caffelite
from caffelite import layers as L
from caffelite import params as P
from caffelite.coord_map import UndefinedMapException, coord_map_from_to, crop
from caffelite.errors import NetError


def lenet(batch_size):
    n = caffelite.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
                                  transform_param=dict(scale=1.0 / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=4, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.ip1 = L.InnerProduct(n.pool1, num_output=10, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
    return n.to_proto()


def test_layers_is_the_netspec_factory_and_the_package_stays_importable():
    import caffelite.layers as pkg
    import caffelite.layers.conv  # noqa: F401  (the implementation modules are still importable)
    assert L is pkg and caffelite.layers is pkg
    assert callable(L.Convolution) and P.Pooling.MAX == 0


def test_lenet_proto_names_and_params():
    proto = lenet(4)
    names = [layer.name for layer in proto.layer]
    assert names == ["data", "conv1", "pool1", "ip1", "relu1", "loss"]
    data, conv, pool, ip, relu, loss = proto.layer
    assert list(data.top) == ["data", "label"]
    assert conv.convolution_param.num_output == 4 and list(conv.convolution_param.kernel_size) == [5]
    assert conv.convolution_param.weight_filler.type == "xavier"
    assert pool.pooling_param.pool == P.Pooling.MAX and pool.pooling_param.stride == 2
    assert list(relu.bottom) == ["ip1"] and list(relu.top) == ["ip1"]  # in place
    assert list(loss.bottom) == ["ip1", "label"]
    assert data.transform_param.scale == pytest.approx(1 / 255)
    # the text parses back and the net builds and runs
    text = str(proto)
    assert text_format.Parse(text, caffelite.proto.caffe_pb2.NetParameter()) == proto


def test_netspec_net_builds_and_runs(tmp_path):
    p = tmp_path / "lenet.prototxt"
    p.write_text(str(lenet(2)))
    net = caffelite.Net(str(p), caffelite.TRAIN)
    net.forward()
    assert net.blobs["ip1"].data.shape == (2, 10)
    assert np.isfinite(float(net.blobs["loss"].data))


def test_autonames_layer_params_and_to_proto():
    data = L.Input(shape=dict(dim=[1, 2, 3, 3]))
    conv = L.Convolution(data, num_output=2, kernel_size=1, param=[dict(lr_mult=1), dict(lr_mult=2)],
                         name="myconv", loss_weight=0)
    proto = caffelite.to_proto(L.Sigmoid(conv))
    assert [layer.name for layer in proto.layer] == ["Input1", "myconv", "Sigmoid1"]
    assert [pp.lr_mult for pp in proto.layer[1].param] == [1, 2]
    assert list(proto.layer[2].bottom) == ["Convolution1"]
    sil = L.Silence(data, ntop=0)
    assert isinstance(sil, caffelite.net_spec.Function)
    split = L.Slice(data, ntop=3, slice_param=dict(axis=1))
    assert len(split) == 3


def test_deconvolution_options_go_to_convolution_param():
    d = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    proto = caffelite.to_proto(L.Deconvolution(d, num_output=1, kernel_size=2, stride=2))
    assert proto.layer[1].convolution_param.stride == [2]


def test_netspec_errors_are_clear():
    with pytest.raises(NetError, match=r"unknown layer type 'Convlution' \(did you mean 'Convolution'"):
        L.Convlution  # noqa: B018  (the attribute access itself is what raises)
    assert not hasattr(L, "NoSuchLayerType")
    d = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    with pytest.raises(NetError, match="layer 'Convolution1' .*convolution_param nor LayerParameter has a field "
                                       "'kernal_size'.*kernel_size"):
        caffelite.to_proto(L.Convolution(d, kernal_size=3))
    with pytest.raises(NetError, match="bad value 'big' for field 'convolution_param.num_output'"):
        caffelite.to_proto(L.Convolution(d, num_output="big"))
    with pytest.raises(NetError, match="bottom 0 of a ReLU layer is a ndarray"):
        L.ReLU(np.zeros(3))


def _fcn_like(pad, ks=3):
    n = caffelite.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_size=ks, pad=pad)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2)
    n.deconv = L.Deconvolution(n.pool, convolution_param=dict(num_output=1, kernel_size=4, stride=2))
    return n


def test_coord_map_through_conv_pool_deconv():
    # data x -> conv (k3, pad p): x + p - 1 -> pool (k2 s2): (y - 0.5) / 2 -> deconv (k4 s2): 2 z + 1.5
    for pad, b in ((0, 0.0), (1, 1.0), (5, 5.0)):
        n = _fcn_like(pad)
        ax, a, off = coord_map_from_to(n.deconv, n.data)
        assert ax == 1
        np.testing.assert_allclose(a, 1)
        np.testing.assert_allclose(off, -b)  # data coordinate = deconv coordinate - pad
        ax, a, off = coord_map_from_to(n.data, n.deconv)
        np.testing.assert_allclose(off, b)


def test_crop_layer_aligns_and_runs(tmp_path):
    n = _fcn_like(5)
    n.crop = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [5]
    p = tmp_path / "fcn.prototxt"
    p.write_text(str(n.to_proto()))
    net = caffelite.Net(str(p), caffelite.TEST)
    net.forward()
    assert net.blobs["crop"].data.shape == (1, 1, 100, 100)


def test_coord_map_undefined_and_bad_crop():
    n = _fcn_like(0)
    n.ip = L.InnerProduct(n.deconv, num_output=2)
    with pytest.raises(UndefinedMapException):
        coord_map_from_to(n.ip, n.data)
    m = caffelite.NetSpec()
    m.data = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    m.pool = L.Pooling(m.data, kernel_size=2, stride=2)
    with pytest.raises(ValueError, match="scale mismatch"):
        crop(m.pool, m.data)
