"""OpenVINO and ONNX Runtime peers for bench/deploy_forward.py (run in an interpreter that has torch, openvino
and onnxruntime; never imported by caffelite).

Usage: ``python _peer_export.py SPEC.json openvino|onnxruntime``. The graph of SPEC is built in PyTorch exactly as
bench/_peer_torch.py builds it (same weights, including the spec's per-layer zero fractions), then converted:
``openvino.convert_model`` and compiled for the CPU plugin (fp32, latency hint, the spec's thread count), or
exported with ``torch.onnx.export`` (TorchScript exporter) and run by an ONNX Runtime CPU session (fp32, the
spec's intra-op threads, one inter-op thread). Then the script serves the same stdin protocol as the torch peer:
the backend's name runs one timed forward, ``mem`` answers the peak RSS growth, ``quit`` ends.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _peer_torch import Graph, rss_mb  # noqa: E402


def _module(torch, graph, outputs):
    class Net(torch.nn.Module):
        def forward(self, data):
            blobs, _ = graph.run({"data": data})
            return tuple(blobs[o] for o in outputs)

    return Net().eval()


def _outputs(spec):
    used = {b for L in spec["layers"] for b in L["bottoms"]}
    return [t for L in spec["layers"] for t in L["tops"] if t not in used and L["type"] != "Input"]


def build(backend, spec):
    """A function running one forward on a fixed input with ``backend``."""
    import torch
    threads = int(spec.get("threads", 2))
    torch.set_num_threads(threads)
    graph = Graph(torch, spec, False)
    feed = graph.inputs()
    x = feed["data"]
    module = _module(torch, graph, _outputs(spec))
    if backend == "openvino":
        import openvino as ov
        with torch.no_grad():
            model = ov.convert_model(module, example_input=(x,))
        core = ov.Core()
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": "f32"})
        req = compiled.create_infer_request()
        xn = x.numpy()
        return lambda: req.infer({0: xn}), f"openvino {ov.__version__}"
    if backend == "onnxruntime":
        import onnxruntime as ort
        path = os.path.join(tempfile.mkdtemp(), "net.onnx")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript here
            torch.onnx.export(module, (x,), path, dynamo=False, input_names=["data"], opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        return lambda: sess.run(None, {"data": xn}), f"onnxruntime {ort.__version__}"
    raise SystemExit(f"peer: unknown backend {backend}")


def main():
    spec = json.load(open(sys.argv[1]))
    backend = sys.argv[2]
    base = rss_mb()
    run, version = build(backend, spec)
    run()  # warm-up

    def once():
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0

    print(json.dumps({"ready": True, "torch": version}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd == "mem":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
            print(json.dumps({"peak_rss_growth_mb": peak}), flush=True)
            continue
        print(json.dumps({"layout": cmd, "time": once()}), flush=True)


if __name__ == "__main__":
    main()
