"""Benchmark: jsegnet21v2 deploy forward in integers (the int8 engine) against OpenVINO int8.

    python bench/int8_forward.py [--shape 1,3,512,1024] [--runs 5] [--sparsity 0.8] [--threads 2] [--no-peer]
                                 [--weights W.caffemodel [--ranges quant_ranges.json]] [--weight-bits 8]

Builds tests/data/reference/cityscapes5_jsegnet21v2/test/deploy.prototxt with ``quantize: true`` at the given
shape, msra weights with the smallest ``--sparsity`` of each convolution's weights set to zero and identity
BatchNorm statistics (bench/deploy_forward.py's realistic_weights), calibrates the quantization ranges on two
forwards of the float simulation and freezes them. Then, alternating run by run so all see the same machine
conditions: caffelite's float forward of the same weights on the dense and sparse engines, the float
simulation of the quantized net (caffe-jacinto's fake quantization), the int8 engine, and the OpenVINO peer
(``_peer_openvino_int8.py`` in --peer-python, default /work/torchvenv/bin/python) on caffelite's QDQ ONNX
export: "qdq" as exported (12-bit float weights) and "int8" (weights per-channel int8). Prints medians, the
ratios and how far the int8 engine's labels agree with the simulation's on the bench input.

``--weights``: a trained model instead (a flagship run's ``stages/sparse/*_iter_N.caffemodel``: its own zeros,
``--sparsity`` is ignored) and with ``--ranges`` that run's ``stages/test_quantize/quant_ranges.json`` (the
ranges its quantized stage calibrated on the val images) instead of two calibration forwards on the bench input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__" and "--threads" in sys.argv:  # must be set before NumPy loads OpenBLAS
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]
    os.environ.setdefault("CAFFELITE_NUM_THREADS", sys.argv[sys.argv.index("--threads") + 1])

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _netbench as nb  # noqa: E402
from deploy_forward import realistic_weights  # noqa: E402

GAP_S = 0.05
#: after the peer: OpenVINO's worker threads keep spinning a while after an inference returns
PEER_GAP_S = 0.5


def build(shape, quantize, sparsity, seed=0, weight_bits=None, weights=None):
    import caffelite
    import caffelite.log  # noqa: F401
    from caffelite import io, jacinto
    from caffelite.net import Net
    p = io.read_net(os.path.join(nb.REF, "test", "deploy.prototxt"))
    p.quantize = quantize
    if weight_bits:
        p.net_quantization_param.bitwidth_weights = weight_bits
    net = Net(p, caffelite.TEST)
    inp = net.inputs[0]
    net.blobs[inp].reshape(*shape)
    net.reshape()
    rs = np.random.default_rng(seed)
    x = rs.uniform(0, 255, shape).astype(np.float32)
    if weights:
        net.copy_from(weights)
        sparsity = 0
    else:
        realistic_weights(net, rs)
    for ly in net.layers:
        if ly.type == "Convolution" and sparsity > 0:
            w = ly.blobs[0].data
            t = np.quantile(np.abs(w), sparsity)
            w[np.abs(w) < t] = 0
    net.repack()
    return net, x, (jacinto.attach_quantization(net) if quantize else None)


def add_net_args(ap):
    """The options that say which quantized jsegnet21v2 to build (shared with bench/int8_profile.py)."""
    ap.add_argument("--shape", default="1,3,512,1024")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weight-bits", type=int, default=None,
                    help="bitwidth_weights of the quantized net (caffe-jacinto's default: 12; 8 runs the u8 x s8 "
                         "kernel, the numeric model OpenVINO int8 runs)")
    ap.add_argument("--weights", default=None, help="a trained caffemodel of jsegnet21v2 (see the docstring)")
    ap.add_argument("--ranges", default=None, help="quantization ranges for --weights (save_ranges JSON)")


def quantized_net(a):
    """(net, input, hook): the quantized net the options ``a`` describe, its ranges frozen (loaded from
    ``--ranges`` or calibrated on two forwards of the input) and its weights quantized."""
    shape = tuple(int(s) for s in a.shape.split(","))
    qnet, x, hook = build(shape, True, a.sparsity, weight_bits=a.weight_bits, weights=a.weights)
    if a.ranges:
        hook.load_ranges(a.ranges)  # its next forward is quantization_start (quantizes the weights)
        qnet.forward(data=x)
    else:
        hook.freeze_ranges(after=2)
        for _ in range(3):  # two measuring forwards, then the one at quantization_start (quantizes the weights)
            qnet.forward(data=x)
    return qnet, x, hook


def warm_until_chosen(engine, forward, most=16):
    """The int8 engine times its dense and sparse kernels on its first forwards (more of them while the two are
    close): run ``forward`` until every layer of ``engine`` has chosen, so that timed runs measure the steady
    state; says which layers still time both after ``most`` forwards."""
    for _ in range(most):
        forward()
        if "int8-auto" not in engine.engine_used.values():
            break
    pending = [k for k, v in engine.engine_used.items() if v == "int8-auto"]
    if pending:
        print(f"note: still timing both kernels on {', '.join(pending)} after the warm-up")


class OVPeer:
    def __init__(self, python, onnx_path, threads):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([python, os.path.join(HERE, "_peer_openvino_int8.py"), onnx_path, str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = json.loads(self.proc.stdout.readline() or "{}")

    def run(self, variant):
        self.proc.stdin.write(variant + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["time"]

    def close(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=60)


def timed(fn):
    time.sleep(GAP_S)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_net_args(ap)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--peer-python", default=os.environ.get("CAFFELITE_PEER_PYTHON", "/work/torchvenv/bin/python"))
    a = ap.parse_args(argv)
    shape = tuple(int(s) for s in a.shape.split(","))
    from caffelite.ops import int8 as i8op
    from caffelite.ops import sparse_conv

    fnet, _, _ = build(shape, False, a.sparsity, weights=a.weights)
    qnet, x, hook = quantized_net(a)
    onnx_path = None
    if not a.no_peer:
        import caffelite
        fd, onnx_path = tempfile.mkstemp(suffix=".onnx")
        os.close(fd)
        caffelite.export_onnx(qnet, onnx_path)
    state = hook.get_state()
    sim_labels = qnet.forward(data=x)["argMaxOut"].copy()
    hook.set_state(state)  # the same forward in integers (some scales alternate from one forward to the next)
    qnet.engine = "int8"
    int_labels = qnet.forward(data=x)["argMaxOut"].copy()
    agree = float(np.mean(sim_labels == int_labels))

    fnet.engine = "dense"
    # the sparse float net is its own net: setting Net.engine re-plans every layer
    fnet_sparse, _, _ = build(shape, False, a.sparsity, weights=a.weights)
    if sparse_conv.available():
        fnet_sparse.engine = "sparse"
    qnet.engine = "dense"  # the float simulation (the int8 engines below run on the same net and hook)
    from caffelite.jacinto.int8_engine import Int8Net
    engines = {"int8 engine": Int8Net(qnet), "int8 (dense int kernel)": Int8Net(qnet, sparse=False),
               "sparse + int8": Int8Net(qnet, sparse=True)}

    def run_int(key):
        return lambda: engines[key].forward(data=x)

    cases = {"float dense": lambda: fnet.forward(data=x), "float simulation": lambda: qnet.forward(data=x)}
    if sparse_conv.available():
        cases["float sparse"] = lambda: fnet_sparse.forward(data=x)
    cases.update({k: run_int(k) for k in engines})
    for fn in cases.values():
        fn()  # warm-up
        fn()
    warm_until_chosen(engines["int8 engine"], cases["int8 engine"])
    peer = OVPeer(a.peer_python, onnx_path, a.threads) if onnx_path else None
    times = {k: [] for k in cases}
    if peer is not None:
        times.update({"openvino qdq export (float weights)": [], "openvino int8": []})
    for _ in range(a.runs):
        for k, fn in cases.items():
            times[k].append(timed(fn))
        if peer is not None:
            time.sleep(GAP_S)
            times["openvino qdq export (float weights)"].append(peer.run("qdq"))
            time.sleep(GAP_S)
            times["openvino int8"].append(peer.run("int8"))
            time.sleep(PEER_GAP_S)
    if peer is not None:
        peer.close()
        os.unlink(onnx_path)
    med = {k: float(np.median(v)) for k, v in times.items()}
    bits = qnet._param.net_quantization_param.bitwidth_weights
    convs = [ly.blobs[0].data for ly in fnet.layers if ly.type == "Convolution"]
    zeros = sum(int(np.count_nonzero(w == 0)) for w in convs) / sum(w.size for w in convs)
    src = f"weights {a.weights}" if a.weights else "random weights"
    print(f"jsegnet21v2 deploy {'x'.join(map(str, shape))}, {src}, {zeros:.1%} zero conv weights, {bits}-bit weights, "
          f"{a.threads} threads, median of {a.runs} interleaved runs; {i8op.info()}")
    if peer is not None:
        print(f"peer: OpenVINO {peer.hello.get('openvino')} ({peer.hello.get('int8_conv_weights')} int8 conv weights)")
    for k, v in med.items():
        print(f"  {k:38s} {v * 1000:9.1f} ms")
    ov = med.get("openvino int8")
    if ov:
        print(f"int8 engine / OpenVINO int8: {med['int8 engine'] / ov:.2f}x (goal <= 1.0)")
    print(f"int8 engine / float simulation: {med['int8 engine'] / med['float simulation']:.2f}x; "
          f"int8 engine / float dense: {med['int8 engine'] / med['float dense']:.2f}x")
    if ov:
        for k in ("int8 (dense int kernel)", "sparse + int8"):
            print(f"{k} / OpenVINO int8: {med[k] / ov:.2f}x (goal: int8 <= 1.0, sparse + int8 <= 0.7)")
    print("int8 engine = per layer the faster of the dense and sparse integer kernels (same integers)")
    print(f"ArgMax agreement int8 engine vs float simulation on the bench input: {agree:.4f}")


if __name__ == "__main__":
    main()
