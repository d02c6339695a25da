"""OpenVINO int8 peer for bench/int8_forward.py (runs in a separate interpreter that has openvino and onnx; never
imported by caffelite).

Usage: ``python _peer_openvino_int8.py MODEL.onnx THREADS``. MODEL is caffelite's QDQ export of a calibrated
quantized net (activations as QuantizeLinear/DequantizeLinear pairs; jacinto's 12-bit asymmetric weights stay
float there). Two variants are compiled for the CPU plugin with THREADS inference threads (latency hint):
"qdq" (the export as it is) and "int8" (every Conv weight initializer quantized per output channel to symmetric
int8 + DequantizeLinear, the usual int8 model OpenVINO's low-precision transformations run as u8 x s8
convolutions). Then it serves requests on stdin, one per line: a variant name runs one inference and answers its
time; ``quit`` ends.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time


def int8_weights(onnx, model):
    """Quantize Conv weight initializers to per-channel symmetric int8 behind DequantizeLinear (in place)."""
    import numpy as np
    from onnx import helper, numpy_helper
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    dq_nodes = []
    for node in g.node:
        if node.op_type != "Conv" or node.input[1] not in inits:
            continue
        name = node.input[1]
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        s = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127.0
        s[s == 0] = 1.0
        q = np.clip(np.rint(w / s.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
        g.initializer.extend([numpy_helper.from_array(q, name + "_i8"),
                              numpy_helper.from_array(s.astype(np.float32), name + "_i8_scale"),
                              numpy_helper.from_array(np.zeros(len(s), np.int8), name + "_i8_zero")])
        dq_nodes.append(helper.make_node("DequantizeLinear", [name + "_i8", name + "_i8_scale", name + "_i8_zero"],
                                         [name + "_i8_dq"], axis=0, name=name + "_i8_dq"))
        node.input[1] = name + "_i8_dq"
    nodes = dq_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return len(dq_nodes)


def main():
    import numpy as np
    import onnx
    import openvino as ov
    path, threads = sys.argv[1], int(sys.argv[2])
    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    model = onnx.load(path)
    n = int8_weights(onnx, model)
    tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    tmp.close()
    onnx.save(model, tmp.name)
    variants = {}
    for key, p in (("qdq", path), ("int8", tmp.name)):
        cm = core.compile_model(core.read_model(p), "CPU", cfg)
        inp = cm.inputs[0]
        x = np.random.default_rng(0).uniform(0, 255, list(inp.shape)).astype(np.float32)
        req = cm.create_infer_request()
        req.infer({0: x})  # warm-up
        variants[key] = (req, x)
    os.unlink(tmp.name)
    print(json.dumps({"openvino": ov.__version__, "int8_conv_weights": n}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        req, x = variants[cmd]
        t0 = time.perf_counter()
        req.infer({0: x})
        print(json.dumps({"time": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    main()
