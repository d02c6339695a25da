"""The jacinto parts of the command line: ``caffelite test --display_sparsity`` in caffe-jacinto's format
(REF:test/run.log, docs/jacinto-spec.md §a.4, §i) on the jsegnet21v2 fixture with pruned weights."""

import os

import numpy as np
import pytest

from conftest import FIXTURES, REFERENCE
from test_jacinto_sparsity import capture_log

JSEG = os.path.join(FIXTURES, "nets", "jsegnet21v2_deploy")


@pytest.fixture
def records():
    with capture_log() as msgs:
        yield msgs


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The deploy net at 32x64 and its weights with 70 % of conv1a's weights set to exactly 0."""
    from caffelite import io
    from caffelite.io.blobs import array_to_blob, blob_to_array
    d = tmp_path_factory.mktemp("pruned")
    p = io.read_net(os.path.join(JSEG, "deploy.prototxt"))
    p.layer[0].input_param.shape[0].dim[:] = [1, 3, 32, 64]
    w = io.read_weights(os.path.join(JSEG, "weights.caffemodel.xz"))
    lp = next(lp for lp in w.layer if lp.name == "conv1a")
    a = blob_to_array(lp.blobs[0])
    flat = a.reshape(-1)
    flat[: int(0.7 * flat.size)] = 0
    lp.blobs[0].CopyFrom(array_to_blob(a.astype(np.float32)))
    mp, wp = str(d / "deploy.prototxt"), str(d / "pruned.caffemodel")
    io.write_text(p, mp)
    io.write_weights(w, wp)
    zeros = {lp.name: int(np.count_nonzero(blob_to_array(lp.blobs[0]) == 0)) for lp in w.layer
             if lp.type == "Convolution"}
    return mp, wp, zeros, a.size


def _reference_sparsity_block():
    with open(os.path.join(REFERENCE, "cityscapes5_jsegnet21v2", "test", "run.log.txt")) as f:
        lines = [ln.rstrip("\n").split("] ", 1)[1] for ln in f if "] " in ln]
    i = lines.index("Sparsity of the test net:")
    return lines[i - 1: i + 21]


def test_display_sparsity_lines(pruned, records):
    from caffelite.cli import main
    mp, wp, zeros, n1a = pruned
    assert main(["test", "--model", mp, "--weights", wp, "--iterations", "1", "--display_sparsity"]) == 0
    i = records.index("Sparsity of the test net:")
    got = records[i - 1: i + 20]
    ref = _reference_sparsity_block()
    assert got[0] == ref[0] == "========================="
    assert got[2] == ref[2] == "Num Params(17), Sparsity (zero_weights/count): "
    # same keys in the same (std::map) order as the reference, jacinto's 3-significant-digit ratios
    assert [ln.split("(")[0] for ln in got[3:20]] == [ln.split("(")[0] for ln in ref[3:20]]
    assert got[3] == f"conv1a_param_0({zeros['conv1a'] / n1a:.3g}) " and zeros["conv1a"] >= 0.7 * n1a
    counted = [ln.split("_param_0")[0] for ln in ref[3:20]]
    z = sum(zeros[n] for n in counted)
    assert got[20] == f"Total Sparsity (zero_weights/count) =  ({z:g}/2.69117e+06) {z / 2691168:.3g}"


def test_display_sparsity_closing_banner_and_gflags_spelling(pruned, records):
    from caffelite.cli import main
    mp, wp = pruned[:2]
    assert main(["test", "--model", mp, "--weights", wp, "--iterations", "1", "--display_sparsity=1"]) == 0
    i = records.index("Sparsity of the test net:")
    assert records[i + 19].startswith("Total Sparsity") and records[i + 20] == "=========================" \
        == _reference_sparsity_block()[21]
