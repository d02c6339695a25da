"""Issue 3: an option caffelite does not support raises an error naming the layer and the field, never a
silent default (``Layer.param_fields`` / ``check_param_fields``), for the conv, pooling, inner-product,
embed and data layer families."""

import pytest
from google.protobuf import text_format

import caffelite
from caffelite.errors import CaffeliteError, UnsupportedError
from caffelite.layer import create_layer
from caffelite.proto import caffe_pb2

INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'


def _net(layer_text, with_input=True):
    """Build a TEST Net of an Input layer feeding ``layer_text`` (or of ``layer_text`` alone)."""
    net = caffe_pb2.NetParameter()
    text_format.Parse((INPUT if with_input else "") + layer_text, net)
    return caffelite.Net(net, phase=caffelite.TEST)


def _raises_naming(layer_text, layer_name, field, with_input=True):
    with pytest.raises(CaffeliteError) as ei:
        _net(layer_text, with_input)
    msg = str(ei.value)
    assert f"'{layer_name}'" in msg and field in msg, msg


def _layer(text):
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(text, lp)
    return lp


# -- Convolution family ------------------------------------------------------------------------------------
def test_convolution_unsupported_axis_names_layer_and_field():
    # a channel axis other than 1 (N-D / channels-last convolution) is not implemented
    _raises_naming('layer { name: "c1" type: "Convolution" bottom: "x" top: "y" '
                   'convolution_param { num_output: 4 kernel_size: 3 axis: 2 } }', "c1", "convolution_param.axis")


def test_im2col_refuses_fields_caffe_ignores():
    # Caffe's Im2col would silently ignore group / num_output: caffelite refuses them
    for opt in ("group: 3", "num_output: 5", "bias_term: false"):
        field = "convolution_param." + opt.split(":")[0]
        with pytest.raises(UnsupportedError, match=f"'i2c'.*{field}"):
            create_layer(_layer(f'name: "i2c" type: "Im2col" convolution_param {{ kernel_size: 2 {opt} }}'))


def test_convolution_accepts_implementation_choices():
    # engine and the cuDNN algorithm choices cannot change the result: accepted, as other layers accept engine
    for layer_type in ("Convolution", "Deconvolution"):
        create_layer(_layer(f'name: "c" type: "{layer_type}" convolution_param {{ num_output: 2 kernel_size: 3 '
                            'engine: CAFFE force_nd_im2col: true cudnn_convolution_algo_seeker: FINDEX '
                            'conv_algos_override: "1,1,1" }'))
    net = _net('layer { name: "c1" type: "Convolution" bottom: "x" top: "y" '
               'convolution_param { num_output: 4 kernel_size: 3 engine: CUDNN } }')
    net.forward()
    assert net.blobs["y"].shape == (2, 4, 6, 6)


# -- Pooling -----------------------------------------------------------------------------------------------
def test_pooling_torch_pooling_is_refused():
    _raises_naming('layer { name: "p1" type: "Pooling" bottom: "x" top: "y" '
                   'pooling_param { pool: MAX kernel_size: 2 stride: 2 torch_pooling: true } }',
                   "p1", "pooling_param.torch_pooling")
    # set to its default value it changes nothing and is accepted
    net = _net('layer { name: "p1" type: "Pooling" bottom: "x" top: "y" '
               'pooling_param { pool: MAX kernel_size: 2 stride: 2 torch_pooling: false engine: CAFFE } }')
    net.forward()
    assert net.blobs["y"].shape == (2, 3, 4, 4)


def test_pooling_stochastic_still_refused():
    _raises_naming('layer { name: "p2" type: "Pooling" bottom: "x" top: "y" '
                   'pooling_param { pool: STOCHASTIC kernel_size: 2 } }', "p2", "pooling_param.pool")


# -- InnerProduct / Embed ----------------------------------------------------------------------------------
def test_inner_product_option_errors_name_layer_and_field():
    from caffelite.layers.inner_product import InnerProductLayer

    # InnerProduct reads every field of its message (so none can be silently ignored) ...
    declared = InnerProductLayer.param_fields["inner_product_param"]
    assert set(declared) == {f.name for f in caffe_pb2.InnerProductParameter.DESCRIPTOR.fields}
    # ... an axis it cannot use names the layer and the field ...
    _raises_naming('layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
                   'inner_product_param { num_output: 3 axis: 4 } }', "fc", "axis")
    # ... and were a field left undeclared, setting it would raise rather than be ignored
    layer = create_layer(_layer('name: "fc" type: "InnerProduct" '
                                'inner_product_param { num_output: 3 transpose: true }'))
    layer.param_fields = {"inner_product_param": tuple(f for f in declared if f != "transpose")}
    with pytest.raises(UnsupportedError, match="'fc'.*inner_product_param.transpose"):
        layer.check_param_fields()


def test_embed_declares_its_whole_message():
    from caffelite.layers.embed import EmbedLayer

    assert set(EmbedLayer.param_fields["embed_param"]) == {
        f.name for f in caffe_pb2.EmbedParameter.DESCRIPTOR.fields}


# -- Data layers -------------------------------------------------------------------------------------------
def test_data_unsupported_transform_option_names_layer_and_field():
    # vertical stretching of NVCaffe's variable-sized transforms is not implemented; checked before the
    # (absent) source is opened
    _raises_naming('layer { name: "d" type: "Data" top: "data" top: "label" '
                   'transform_param { vertical_stretch_lower: 0.8 } '
                   'data_param { source: "/nonexistent" batch_size: 2 backend: LMDB } }',
                   "d", "transform_param.vertical_stretch_lower", with_input=False)
    for opt in ("forward_packing: NHWC", "allow_upscale: true", "num_labels: 3"):
        field = "transform_param." + opt.split(":")[0]
        with pytest.raises(UnsupportedError, match=f"'d2'.*{field}"):
            create_layer(_layer(f'name: "d2" type: "ImageData" transform_param {{ {opt} }} '
                                'image_data_param { source: "/nonexistent" batch_size: 2 }'))


def test_data_layers_accept_implementation_choices():
    from caffelite.layers.data import DataLayer

    # thread counts, GPU transform and debug display cannot change results: no error at option check time,
    # and the options are kept as given
    choices = 'transform_param { use_gpu_transform: true display: true } ' \
              'data_param { source: "/nonexistent" batch_size: 2 parser_threads: 3 threads: 2 }'
    layer = create_layer(_layer(f'name: "d" type: "Data" {choices}'))
    assert type(layer) is DataLayer
    assert layer.param.data_param.parser_threads == 3 and layer.param.transform_param.use_gpu_transform
    # accepting them does not open the message: an option that would change the result beside them is refused
    refused = choices.replace("display: true", "display: true vertical_stretch_lower: 0.8")
    with pytest.raises(UnsupportedError, match="'d'.*transform_param.vertical_stretch_lower"):
        create_layer(_layer(f'name: "d" type: "Data" {refused}'))


def test_dummy_data_declares_its_whole_message():
    from caffelite.layers.data import DummyDataLayer

    assert set(DummyDataLayer.param_fields["dummy_data_param"]) == {
        f.name for f in caffe_pb2.DummyDataParameter.DESCRIPTOR.fields}
