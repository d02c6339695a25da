"""How closely ONNX Runtime reproduces caffelite's quantized (caffe-jacinto) forward of a flagship run.

    python bench/onnx_quant_agreement.py RUN_DIR [--forms runtime,exact] [--images N] [--per-layer N]

RUN_DIR is a flagship run (``stages/test_quantize/deploy.prototxt``, ``stages/sparse/*.caffemodel``,
``data/lists/val-*-list.txt``). The evaluation of the pipeline is replayed (the simulation calibrates its ranges on
the val images, as ``evaluate_stage`` does), then the ranges are frozen and every val image is run through the
simulation and through ONNX Runtime (CPU, graph optimisations on and off) for each QDQ form. Prints per image and
overall the fraction of net-size pixels whose class (ArgMax) agrees, and the pixel accuracy / mean IoU at label
resolution of the simulation and of each ONNX variant.

With frozen ranges jacinto's scale chaining (``scale_applied``) still moves some scales by one float32 ulp from one
forward to the next (a short cycle); the ONNX model compared with a forward is exported from that forward's own
parameters (one export per distinct parameter set, cached), so only the arithmetic is compared.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _params_key(net):
    """Every quantization parameter the quantizers of the next forward read (scales, offsets, flags)."""
    key = []
    for ly in net.layers:
        if ly.param.HasField("quantization_param"):
            qp = ly.param.quantization_param
            for group in (qp.qparam_in, qp.qparam_w, qp.qparam_out):
                key.extend((bool(q.quantize), float(q.scale_target), float(q.offset)) for q in group)
    return tuple(key)


def _conv_f64(x, w, b, gm, group):
    """Convolution accumulated in float64 (float32 products are exact there), rounded once to float32, then the
    bias added in float32: the simulation's exact sums, written independently of caffelite's kernels."""
    x = np.pad(x[0].astype(np.float64), ((0, 0), (gm.ph, gm.ph), (gm.pw, gm.pw)))
    c, h, wd = x.shape
    o = w.shape[0]
    ho = (h - (gm.dh * (gm.kh - 1) + 1)) // gm.sh + 1
    wo = (wd - (gm.dw * (gm.kw - 1) + 1)) // gm.sw + 1
    out = np.zeros((o, ho, wo))
    cg, og = c // group, o // group
    w = np.asarray(w, np.float64)
    for g in range(group):
        for ki in range(gm.kh):
            for kj in range(gm.kw):
                r0, c0 = ki * gm.dh, kj * gm.dw
                xs = x[g * cg:(g + 1) * cg, r0:r0 + gm.sh * (ho - 1) + 1:gm.sh, c0:c0 + gm.sw * (wo - 1) + 1:gm.sw]
                out[g * og:(g + 1) * og] += np.tensordot(w[g * og:(g + 1) * og, :, ki, kj], xs, axes=(1, 0))
    out = out.astype(np.float32)
    if b is not None:
        out += np.asarray(b, np.float32).reshape(-1, 1, 1)
    return out[None]


def per_layer(net, inputs, tmp):
    """Where the flips start: for each convolution -> BatchNorm -> ReLU -> quantizer segment, fed the
    simulation's own values (teacher forced), the number of quantized elements that land on another level when
    (a) only the tail (BatchNorm, ReLU, quantizer) runs in ONNX Runtime, per QDQ form, (b) ONNX Runtime's
    convolution (float32, the runtime form's Conv) feeds the exact tail, (c) a float64-accumulated convolution
    (the simulation's exact sums) feeds the exact tail."""
    import onnx
    import onnxruntime as ort
    from onnx.utils import Extractor

    from caffelite.export import export_onnx

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    convs = [i for i, ly in enumerate(net.layers) if ly.param.type == "Convolution"]
    rows = {i: np.zeros(5, np.int64) for i in convs}  # tail runtime, tail exact, ORT conv, f64 conv, elements
    for x in inputs:
        bottoms, pre = {}, {}

        def before(n, i, layer, b, t, bottoms=bottoms):
            bottoms[i] = [np.array(v.data) for v in b]

        def after(n, i, layer, b, t, pre=pre):  # runs before the quantization hook: the unquantized tops
            pre[i] = [np.array(v.data) for v in t]

        net.hooks.before_forward.append(before)
        net.hooks.after_forward.insert(0, after)
        try:
            net.forward(data=x)
        finally:
            net.hooks.before_forward.remove(before)
            net.hooks.after_forward.remove(after)
        models = {}
        for form in ("runtime", "exact"):
            path = os.path.join(tmp, f"layers_{form}.onnx")
            export_onnx(net, path, qdq_form=form)
            models[form] = onnx.shape_inference.infer_shapes(onnx.load(path))
        for i in convs:
            ly, blob = net.layers[i], net.layers[i].param.top[0]
            final = np.array(net.blobs[blob].data)
            run = {}
            for form, m in models.items():
                dq = [n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"
                      and n.output[0].startswith(blob + "/dequantized")]
                if not dq:
                    break
                tail = ort.InferenceSession(Extractor(m).extract_model([blob], dq[-1:]).SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
                run[form] = lambda v, t=tail, name=blob: t.run(None, {name: v})[0]
            # ONNX Runtime's float32 Conv (the runtime form's; the exact form sums in float64 MatMuls)
            conv = [n for n in models["runtime"].graph.node if n.op_type == "Conv" and n.output[0] == blob]
            if len(run) < 2 or not conv:
                continue
            head = ort.InferenceSession(Extractor(models["runtime"]).extract_model([conv[0].input[0]], [blob])
                                        .SerializeToString(), so, providers=["CPUExecutionProvider"])
            ort_conv = head.run(None, {conv[0].input[0]: bottoms[i][0]})[0]
            f64 = _conv_f64(bottoms[i][0], ly.blobs[0].data, ly.blobs[1].data if len(ly.blobs) > 1 else None,
                            ly.geom, int(ly.group))
            rows[i] += [int((run["runtime"](pre[i][0]) != final).sum()), int((run["exact"](pre[i][0]) != final).sum()),
                        int((run["exact"](ort_conv) != final).sum()), int((run["exact"](f64) != final).sum()),
                        final.size]
    print(f"per-layer, teacher forced, {len(inputs)} image(s): quantized elements on another level than the "
          "simulation's")
    print(f"  {'segment':18s} {'tail runtime':>12s} {'tail exact':>10s} {'ORT conv':>9s} {'f64 conv':>9s} "
          f"{'elements':>9s}")
    total = np.zeros(5, np.int64)
    for i, r in rows.items():
        if r[4]:
            print(f"  {net.layers[i].param.name:18s} {r[0]:12d} {r[1]:10d} {r[2]:9d} {r[3]:9d} {r[4]:9d}")
            total += r
    print(f"  {'total':18s} {total[0]:12d} {total[1]:10d} {total[2]:9d} {total[3]:9d} {total[4]:9d}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--forms", default="runtime,exact", help="QDQ forms to compare (comma separated)")
    ap.add_argument("--images", type=int, default=0, help="first N val images only (default: all)")
    ap.add_argument("--quiet", action="store_true", help="no per-image lines")
    ap.add_argument("--per-layer", type=int, default=0, metavar="N",
                    help="also attribute the flips per convolution segment on the first N images (see per_layer)")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from caffelite import jacinto
    from caffelite.data.imageops import resize_lanczos_pil, resize_nearest_pil
    from caffelite.segmentation.infer import Segmenter, _read_label, evaluate_lists
    from caffelite.segmentation.lmdbs import _load_pair_lists
    from caffelite.segmentation.metrics import ConfusionAccumulator
    from caffelite.data.reader import load_image
    from caffelite.export import export_onnx

    logging.getLogger("caffelite").setLevel(logging.WARNING)
    stage = os.path.join(args.run_dir, "stages", "test_quantize")
    weights = sorted(glob.glob(os.path.join(args.run_dir, "stages", "sparse", "*.caffemodel")))[-1]
    lists = os.path.join(args.run_dir, "data", "lists")
    img_list, lab_list = os.path.join(lists, "val-image-list.txt"), os.path.join(lists, "val-label-list.txt")
    seg = Segmenter(os.path.join(stage, "deploy.prototxt"), weights)
    net = seg.net
    hook = jacinto.attach_from_proto(net).quantization[0]
    evaluate_lists(seg, img_list, lab_list, num_classes=5, num_images=args.images, progress=False)
    hook.freeze_ranges(True)

    forms = [f for f in args.forms.split(",") if f]
    variants = [(f, opt) for f in forms for opt in (True, False)]
    tmp = tempfile.mkdtemp(prefix="onnx_quant_agreement_")
    sessions = {}

    def sessions_for_current_params():
        key = _params_key(net)
        if key not in sessions:
            k = len(sessions)
            sessions[key] = {}
            for form in forms:
                path = os.path.join(tmp, f"{form}_{k}.onnx")
                export_onnx(net, path, qdq_form=form)
                for opt in (True, False):
                    so = ort.SessionOptions()
                    so.intra_op_num_threads = 1
                    if not opt:
                        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                    sessions[key][form, opt] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return sessions[key]

    imgs, labs = _load_pair_lists(img_list, lab_list)
    if args.images:
        imgs, labs = imgs[: args.images], labs[: args.images]
    _, _, h, w = seg.shape
    conf = {"simulation": ConfusionAccumulator(5)}
    conf.update({v: ConfusionAccumulator(5) for v in variants})
    agree = {v: [0, 0] for v in variants}

    def name(v):
        return f"{v[0]}{'' if v[1] else ' (no ORT opt)'}"

    print(f"{len(imgs)} val images at {h}x{w}; variants: " + ", ".join(name(v) for v in variants))
    for ip, lp in zip(imgs, labs, strict=True):
        chw = load_image(ip, is_color=True)
        lab = _read_label(lp, lab_list)
        x = chw if chw.shape[1:] == (h, w) else resize_lanczos_pil(chw, h, w)
        x = x[None].astype(np.float32)
        sim = np.array(net.forward(data=x)[seg.output])[0, 0]
        sess = sessions_for_current_params()  # the parameters this forward used (after it ran)
        conf["simulation"].update(lab, resize_nearest_pil(np.rint(sim).astype(np.int64), *lab.shape))
        line = []
        for v in variants:
            out = sess[v].run([seg.output], {"data": x})[0][0, 0]
            same = int((out == sim).sum())
            agree[v][0] += same
            agree[v][1] += sim.size
            conf[v].update(lab, resize_nearest_pil(np.rint(out).astype(np.int64), *lab.shape))
            line.append(f"{name(v)} {same / sim.size:.4%}")
        if not args.quiet:
            print(f"  {os.path.basename(ip)}: " + ", ".join(line))
    print(f"parameter sets seen with frozen ranges: {len(sessions)}")
    for v in variants:
        print(f"agreement {name(v)}: {agree[v][0] / agree[v][1]:.4%} of {agree[v][1]} pixels")
    if args.per_layer:
        xs = []
        for ip in imgs[: args.per_layer]:
            chw = load_image(ip, is_color=True)
            xs.append((chw if chw.shape[1:] == (h, w) else resize_lanczos_pil(chw, h, w))[None].astype(np.float32))
        per_layer(net, xs, tmp)
    for k, acc in conf.items():
        s = acc.scores()["jacinto"]
        print(f"{k if isinstance(k, str) else name(k)}: pixel accuracy {s['pixel_accuracy']:.4%}, "
              f"mean IoU {s['mean_iou']:.4%}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
