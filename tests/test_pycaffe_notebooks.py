"""The code of pycaffe's two best-known notebooks, 00-classification and 01-learning-lenet, run unmodified
(``import caffe``) through ``caffelite pyrun`` on tiny inputs: a small CaffeNet-like deploy net with random
weights, and a small LeNet trained on a synthetic MNIST-like LMDB made here."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import caffelite
from caffelite import io as cio
from caffelite.data.lmdb_io import LMDBWriter

DEPLOY = """
name: "TinyCaffeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 10 dim: 3 dim: 20 dim: 20 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 1 weight_filler { type: "gaussian" std: 0.1 }
                      bias_filler { type: "constant" value: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool1" top: "fc6"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "prob" type: "Softmax" bottom: "fc6" top: "prob" }
"""

CLASSIFICATION = r'''
import sys
import numpy as np
import caffe

root = sys.argv[1]
model_def, model_weights = root + "/deploy.prototxt", root + "/weights.caffemodel"
caffe.set_mode_cpu()
net = caffe.Net(model_def,      # defines the structure of the model
                model_weights,  # contains the trained weights
                caffe.TEST)     # use test mode (e.g., don't perform dropout)

# load the mean image for subtraction; average over pixels to get the mean (BGR) pixel values
mu = np.load(root + "/mean.npy")
mu = mu.mean(1).mean(1)
print("mean-subtracted values:", list(zip("BGR", mu)))

transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
transformer.set_transpose("data", (2, 0, 1))     # move image channels to outermost dimension
transformer.set_mean("data", mu)                 # subtract the dataset-mean value in each channel
transformer.set_raw_scale("data", 255)           # rescale from [0, 1] to [0, 255]
transformer.set_channel_swap("data", (2, 1, 0))  # swap channels from RGB to BGR

net.blobs["data"].reshape(50, 3, 20, 20)         # batch size 50
image = caffe.io.load_image(root + "/cat.jpg")
transformed_image = transformer.preprocess("data", image)
net.blobs["data"].data[...] = transformed_image
output = net.forward()
output_prob = output["prob"][0]
print("predicted class is:", output_prob.argmax())

labels = np.loadtxt(root + "/synset_words.txt", str, delimiter="\t")
print("output label:", labels[output_prob.argmax()])
top_inds = output_prob.argsort()[::-1][:5]
print("probabilities and labels:", list(zip(output_prob[top_inds], labels[top_inds])))

for layer_name, blob in net.blobs.items():
    print(layer_name + "\t" + str(blob.data.shape))
for layer_name, param in net.params.items():
    print(layer_name + "\t" + str(param[0].data.shape), str(param[1].data.shape))
filters = net.params["conv1"][0].data
tiles = filters.transpose(0, 2, 3, 1)
feat = net.blobs["conv1"].data[0, :36]
feat = net.blobs["pool1"].data[0]
feat = net.blobs["fc6"].data[0]
feat = net.blobs["prob"].data[0]

# checks: every row of the batch is the same image; softmax rows sum to 1
assert output["prob"].shape == (50, 5)
assert np.allclose(output["prob"], output_prob[None], atol=1e-6)
assert abs(float(output_prob.sum()) - 1) < 1e-5
expect = (image.transpose(2, 0, 1)[::-1] * 255 - mu[:, None, None]).astype(np.float32)
assert np.allclose(transformed_image, expect, atol=1e-3)

# the same through caffe.Classifier (python/classify.py's path), center crop and ten crops
clf = caffe.Classifier(model_def, model_weights, image_dims=(20, 20), mean=mu, raw_scale=255,
                       channel_swap=(2, 1, 0))
center = clf.predict([image], oversample=False)
assert center.shape == (1, 5) and np.allclose(center[0], output_prob, atol=1e-5)
ten = clf.predict([image, image[::-1]], oversample=True)
assert ten.shape == (2, 5) and np.allclose(ten.sum(1), 1, atol=1e-5)
big = caffe.Classifier(model_def, model_weights, image_dims=(24, 24), mean=mu, raw_scale=255,
                       channel_swap=(2, 1, 0))
assert big.predict([image]).shape == (1, 5)
print("CLASSIFICATION OK")
'''

LENET = r'''
import sys
import numpy as np
from numpy import zeros
import caffe
from caffe import layers as L, params as P

root = sys.argv[1]


def lenet(lmdb, batch_size):
    # our version of LeNet: a series of linear and simple nonlinear transformations (scaled down)
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=8, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=16, weight_filler=dict(type="xavier"))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=64, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


with open(root + "/lenet_auto_train.prototxt", "w") as f:
    f.write(str(lenet(root + "/mnist_train_lmdb", 20)))
with open(root + "/lenet_auto_test.prototxt", "w") as f:
    f.write(str(lenet(root + "/mnist_test_lmdb", 20)))
with open(root + "/lenet_auto_solver.prototxt", "w") as f:
    f.write(f"""train_net: "{root}/lenet_auto_train.prototxt"
test_net: "{root}/lenet_auto_test.prototxt"
test_iter: 5
test_interval: 500
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 100
max_iter: 10000
snapshot: 5000
snapshot_prefix: "{root}/lenet"
random_seed: 1
""")

caffe.set_mode_cpu()
solver = None
solver = caffe.SGDSolver(root + "/lenet_auto_solver.prototxt")
print([(k, v.data.shape) for k, v in solver.net.blobs.items()])
print([(k, v[0].data.shape) for k, v in solver.net.params.items()])
solver.net.forward()           # train net
solver.test_nets[0].forward()  # test net (there can be more than one)
grid = solver.net.blobs["data"].data[:8, 0].transpose(1, 0, 2).reshape(28, 8 * 28)
print("train labels:", solver.net.blobs["label"].data[:8])
solver.step(1)
diffs = solver.net.params["conv1"][0].diff[:, 0].reshape(2, 4, 5, 5).transpose(0, 2, 1, 3).reshape(2 * 5, 4 * 5)

niter = 60
test_interval = 20
train_loss = zeros(niter)
test_acc = zeros(int(np.ceil(niter / test_interval)))
output = zeros((niter, 8, 10))
for it in range(niter):
    solver.step(1)  # SGD by Caffe
    train_loss[it] = solver.net.blobs["loss"].data
    solver.test_nets[0].forward(start="conv1")
    output[it] = solver.test_nets[0].blobs["score"].data[:8]
    if it % test_interval == 0 or it == niter - 1:
        correct = 0
        for test_it in range(5):
            solver.test_nets[0].forward()
            correct += sum(solver.test_nets[0].blobs["score"].data.argmax(1)
                           == solver.test_nets[0].blobs["label"].data)
        test_acc[min(it // test_interval, len(test_acc) - 1)] = correct / 100
        print("Iteration", it, "testing... accuracy", correct / 100)

print("train loss first/last:", train_loss[:3].mean(), train_loss[-3:].mean())
assert train_loss[-5:].mean() < 0.6 * train_loss[:5].mean()
assert test_acc[-1] > 0.5  # 10 classes: chance is 0.1

# the notebook's second part: a solver written from caffe_pb2.SolverParameter
from caffe.proto import caffe_pb2
s = caffe_pb2.SolverParameter()
s.random_seed = 0xCAFFE
s.train_net = root + "/lenet_auto_train.prototxt"
s.test_net.append(root + "/lenet_auto_test.prototxt")
s.test_interval = 500
s.test_iter.append(5)
s.max_iter = 10000
s.type = "Adam"
s.base_lr = 0.001
s.momentum = 0.9
s.momentum2 = 0.999
s.lr_policy = "inv"
s.gamma = 0.0001
s.power = 0.75
s.display = 1000
s.snapshot = 5000
s.snapshot_prefix = root + "/custom_net"
s.solver_mode = caffe_pb2.SolverParameter.CPU
with open(root + "/custom_solver.prototxt", "w") as f:
    f.write(str(s))
solver = caffe.get_solver(root + "/custom_solver.prototxt")
first = None
for it in range(20):
    solver.step(1)
    loss = float(solver.net.blobs["loss"].data)
    first = loss if first is None else first
assert type(solver).__name__ == "AdamSolver"
print("custom solver loss", first, "->", loss)
print("LENET OK")
'''


def _pyrun(script_path, *args, cwd):
    return subprocess.run([sys.executable, "-m", "caffelite", "pyrun", str(script_path), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=dict(os.environ, GLOG_minloglevel="1"))


def test_00_classification(tmp_path):
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    caffelite.set_random_seed(5)
    net = caffelite.Net(str(tmp_path / "deploy.prototxt"), caffelite.TEST)
    net.save(str(tmp_path / "weights.caffemodel"))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "mean.npy", (rng.random((3, 20, 20)) * 40 + 100).astype(np.float32))
    img = (rng.random((26, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).resize((20, 20)).save(tmp_path / "cat.jpg", quality=95)
    (tmp_path / "synset_words.txt").write_text("".join(f"n0{i} class {i}\n" for i in range(5)))
    (tmp_path / "classification.py").write_text(CLASSIFICATION)
    r = _pyrun(tmp_path / "classification.py", tmp_path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "CLASSIFICATION OK" in r.stdout
    assert "fc6\t(5, 648) (5,)" in r.stdout


def _mnist_like(path, n, seed):
    """n 28x28 uint8 digits-to-be: class k is a bright 7x7 square at the k-th of 10 grid spots, plus noise."""
    rng = np.random.default_rng(seed)
    with LMDBWriter(str(path)) as w:
        for i in range(n):
            k = int(rng.integers(10))
            img = rng.integers(0, 60, (1, 28, 28)).astype(np.uint8)
            y, x = 2 + (k // 5) * 13, 1 + (k % 5) * 5
            img[0, y:y + 7, x:x + 7] = 230
            w.put(f"{i:08d}", cio.array_to_datum(img, label=k).SerializeToString())


@pytest.mark.filterwarnings("ignore")
def test_01_learning_lenet(tmp_path):
    _mnist_like(tmp_path / "mnist_train_lmdb", 400, 1)
    _mnist_like(tmp_path / "mnist_test_lmdb", 100, 2)
    (tmp_path / "lenet.py").write_text(LENET)
    r = _pyrun(tmp_path / "lenet.py", tmp_path, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-4000:]
    assert "LENET OK" in r.stdout
