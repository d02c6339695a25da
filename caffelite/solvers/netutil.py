"""The solver's view of a Net: building train/test nets from a SolverParameter, and small accessors.

Kept in one place so the loop (base.py) only speaks of what Caffe's Solver needs: learnable params with
their lr/decay multipliers, forward/backward, outputs with loss weights, weight sharing and update.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import SolverError

TRAIN, TEST = 0, 1


def _resolve(path, base_dir):
    """Caffe opens net files relative to the CWD; fall back to the solver file's folder."""
    if os.path.exists(path) or base_dir is None or os.path.isabs(path):
        return path
    alt = os.path.join(base_dir, path)
    return alt if os.path.exists(alt) else path


def read_solver_param(path):
    """Read a solver prototxt (upgraded) and apply Caffe's snapshot_prefix default.

    As BVLC's ``ReadSolverParamsFromTextFileOrDie``: an empty ``snapshot_prefix`` becomes the solver file's
    path without its extension; a prefix that is a directory (ends in ``/``) gets the file's stem appended.
    """
    from .. import io
    param = io.read_solver(path)
    stem = os.path.splitext(path)[0]
    if not param.snapshot_prefix:
        param.snapshot_prefix = stem
    elif param.snapshot_prefix.endswith(("/", os.sep)):
        param.snapshot_prefix = param.snapshot_prefix + os.path.basename(stem)
    return param


def check_solver_fields(sp):
    """Refuse the SolverParameter options caffelite does not implement, naming the field (never a silent
    default); warn about the ones that only change diagnostics."""
    from .. import log as glog
    from ..proto import caffe_pb2
    if sp.HasField("solver_data_type") and sp.solver_data_type != caffe_pb2.FLOAT:
        name = caffe_pb2.Type.values_by_number[sp.solver_data_type].name
        raise SolverError(f"solver_data_type: {name} is not supported (caffelite keeps weights and solver history "
                          "in float32)")
    if sp.test_and_snapshot_last_epochs > 0:
        raise SolverError("test_and_snapshot_last_epochs (caffe-jacinto's scored snapshots over the last epochs) "
                          "is not supported")
    if sp.eval_type != "classification":
        raise SolverError(f"eval_type: '{sp.eval_type}' is not supported (only 'classification': each test net's "
                          "outputs are averaged over test_iter batches)")
    if sp.debug_info:
        glog.warning("debug_info: true is ignored (caffelite does not log per-blob norms)", "solver.cpp:60")


def _read_net(path, base_dir):
    from .. import io
    return io.read_net(_resolve(path, base_dir))


def _make_net(net_param, phase, state_param=None, level=0, stages=()):
    """A Net for ``net_param`` whose NetState is Caffe's merge: phase, then net's own state, then solver's."""
    from ..net import Net
    from ..proto import caffe_pb2

    p = caffe_pb2.NetParameter()
    p.CopyFrom(net_param)
    st = caffe_pb2.NetState(phase=phase)
    st.MergeFrom(p.state)
    if state_param is not None:
        st.MergeFrom(state_param)
    st.phase = phase
    if level:
        st.level = level
    for s in stages:
        if s not in st.stage:
            st.stage.append(s)
    p.state.CopyFrom(st)
    # no net extensions: the solver's own extensions install what its nets need, once
    return Net(p, phase, extensions=False, level=st.level, stages=list(st.stage))


def build_train_net(sp, level=0, stages=(), base_dir=None):
    """The TRAIN net of a solver: exactly one of train_net_param, train_net, net_param, net (Caffe's rule)."""
    given = [f for f in ("train_net_param", "train_net", "net_param", "net") if sp.HasField(f)]
    if len(given) != 1:
        raise SolverError("the solver must specify exactly one of train_net_param, train_net, net_param, net"
                          f" (got {', '.join(given) or 'none'})")
    f = given[0]
    if f in ("train_net_param", "net_param"):
        param = getattr(sp, f)
    else:
        param = _read_net(getattr(sp, f), base_dir)
    state = sp.train_state if sp.HasField("train_state") else None
    return _make_net(param, TRAIN, state, level, stages)


def build_test_nets(sp, level=0, stages=(), base_dir=None):
    """The TEST nets: test_net_param, then test_net files, then ``net``/``net_param`` for the rest of test_iter."""
    sources = [("param", p) for p in sp.test_net_param] + [("file", f) for f in sp.test_net]
    n_generic = 0
    if sp.HasField("net") or sp.HasField("net_param"):
        n_generic = len(sp.test_iter) - len(sources)
    if len(sources) + max(n_generic, 0) != len(sp.test_iter):
        raise SolverError(f"test_iter must be specified for each test network (got {len(sp.test_iter)} test_iter "
                          f"for {len(sources) + max(n_generic, 0)} test nets)")
    if sp.test_state and len(sp.test_state) != len(sp.test_iter):
        raise SolverError("test_state must be unspecified or specified once per test net")
    for _ in range(max(n_generic, 0)):
        sources.append(("param", sp.net_param) if sp.HasField("net_param") else ("file", sp.net))
    nets = []
    for k, (kind, src) in enumerate(sources):
        param = src if kind == "param" else _read_net(src, base_dir)
        state = sp.test_state[k] if sp.test_state else None
        nets.append(_make_net(param, TEST, state))
    return nets


def learnable_params(net):
    return list(net.learnable_params)


def param_mults(net):
    """(lr_mults, decay_mults) per learnable param, with caffe-jacinto's forced BatchNorm specs (§c.2).

    jacinto's 5-blob BatchNorm forces lr_mult 0 / decay_mult 0 on the statistics (blobs 0-2) and 1 / 1 on
    γ/β (blobs 3-4) whatever the prototxt says; BVLC's 3-blob BatchNorm has only the statistics (0 / 0).
    """
    params = learnable_params(net)
    lr = [1.0 if v is None else float(v) for v in getattr(net, "params_lr", [1.0] * len(params))]
    decay = [1.0 if v is None else float(v) for v in getattr(net, "params_weight_decay", [1.0] * len(params))]
    index = {id(b): i for i, b in enumerate(params)}
    for layer in getattr(net, "layers", []) or []:
        if getattr(layer, "type", None) != "BatchNorm":
            continue
        for j, b in enumerate(getattr(layer, "blobs", [])):
            i = index.get(id(b))
            if i is None:
                continue
            forced = 0.0 if j < 3 else 1.0
            lr[i], decay[i] = forced, forced
    return lr, decay


def set_solver_iter(net, it):
    """Tell ``net`` the owning solver's iteration: :meth:`caffelite.net.Net.set_iteration` is the one way (a
    stand-in net object without it gets ``solver_iter`` set on the layers that read it)."""
    if hasattr(net, "set_iteration"):
        net.set_iteration(it)
        return
    for layer in getattr(net, "layers", None) or []:
        if hasattr(layer, "solver_iter"):
            layer.solver_iter = it


def clear_param_diffs(net):
    if hasattr(net, "clear_param_diffs"):
        net.clear_param_diffs()
    else:
        for b in learnable_params(net):
            b.diff[...] = 0


def forward_backward(net):
    """One forward + backward; returns the weighted loss."""
    return net.forward_backward()


def forward(net):
    """One forward; returns Caffe's loss (Σ loss_weight × output)."""
    net.forward()
    loss = getattr(net, "loss", None)
    if loss is None:
        loss = sum(w * v for _, v, w in output_scores(net) if w)
    return loss


class ScoreSum:
    """Caffe's test-score accumulation: one forward per :meth:`add`, float32 sums of every output value, the
    summed loss; :meth:`means` gives ``[(output name, mean, loss weight)]`` over the batches added."""

    def __init__(self):
        self.sums, self.names, self.weights, self.loss, self.n = None, [], [], 0.0, 0

    def add(self, net):
        """Forward ``net`` once and add its outputs; returns them as :func:`output_scores` does."""
        self.loss += float(forward(net))
        res = output_scores(net)
        vals = np.array([v for _, v, _ in res], dtype=np.float32)
        if self.sums is None:
            self.sums, self.names, self.weights = vals, [r[0] for r in res], [r[2] for r in res]
        else:
            self.sums = self.sums + vals
        self.n += 1
        return res

    def means(self):
        if self.sums is None:
            return []
        n = np.float32(self.n)
        return [(name, float(self.sums[j] / n), w) for j, (name, w) in enumerate(zip(self.names, self.weights,
                                                                                        strict=True))]


def _loss_weight(net, name):
    lw = getattr(net, "blob_loss_weights", None)
    if lw is None:
        lw = getattr(net, "_blob_loss_weights", None)
    if lw is not None:
        try:
            return float(lw[name])
        except (KeyError, TypeError):
            pass
    return 0.0


def output_scores(net):
    """[(output name, value, loss weight)] for every element of every output blob, Caffe's order."""
    from ..backend import to_numpy
    out = []
    for name in net.outputs:
        vals = to_numpy(net.blobs[name].data).reshape(-1)
        w = _loss_weight(net, name)
        for v in vals:
            out.append((name, float(v), w))
    return out


def share_weights(test_net, train_net):
    if test_net is not train_net:
        test_net.share_weights_from(train_net)


def update(net):
    """``w -= diff`` for every learnable param (Caffe's ``Net::Update``)."""
    if hasattr(net, "update"):
        net.update()
    else:
        for b in learnable_params(net):
            b.data -= b.diff


def net_name(net):
    return getattr(net, "name", "") or ""


def _finite(arr):
    from ..backend import get_array_module
    xp = get_array_module(arr)
    return bool(xp.all(xp.isfinite(arr)))


def _replay_start(net):
    """Index of the first layer with bottoms, when replaying from there recomputes the same values (no later
    layer writes in place into a top of the source layers before it); else None."""
    layers = getattr(net, "layers", None)
    if not layers or not hasattr(net, "bottom_ids"):  # a stand-in net object: no wiring to replay
        return None
    bottoms = [net.bottom_ids(i) for i in range(len(layers))]
    tops = [net.top_ids(i) for i in range(len(layers))]
    start = next((i for i, b in enumerate(bottoms) if b), None)
    if start is None:
        return None
    sources = {t for i in range(start) for t in tops[i]}
    if any(set(bottoms[i]) & set(tops[i]) & sources for i in range(start, len(layers))):
        return None
    return start


def first_non_finite(net):
    """(layer name, top name) of the first layer, in order, whose output held a NaN or inf; else (None, None).

    In-place layers overwrite their bottom, so the blobs after a forward only show where a value ended up.
    When it is safe (see :func:`_replay_start`), the forward is replayed from the first layer after the data
    sources, checking each layer's tops as it runs; the run is stopping anyway, so the replay's side effects
    (BatchNorm statistics) do not matter."""
    names = list(getattr(net, "top_names", None) or {})
    start = _replay_start(net)
    if start is not None and hasattr(net, "add_hook"):
        found = []

        def check(_net, i, layer, bottom, top):
            if not found:
                for j, t in enumerate(top):
                    if not _finite(t.data):
                        found.append((names[i], net.top_ids(i)[j]))
                        break

        net.add_hook("after_forward", check)
        try:
            with np.errstate(all="ignore"):
                net.forward(start=start)
        except Exception:  # noqa: BLE001 - a diagnosis must never hide the original error
            pass
        finally:
            net.remove_hook("after_forward", check)
        if found:
            return found[0]
    tops = getattr(net, "top_names", None) or {}
    for layer_name, tnames in tops.items():
        for t in tnames:
            if not _finite(net.blobs[t].data):
                return layer_name, t
    return None, None


def first_non_finite_param(net):
    """``"layer/i"`` of the first learnable param holding a NaN or inf, else None."""
    params = learnable_params(net)
    names = list(getattr(net, "learnable_param_names", None) or [str(i) for i in range(len(params))])
    for name, blob in zip(names, params, strict=False):
        if not _finite(blob.data):
            return name
    return None


def data_layers_with_state(net):
    """[(layer name, layer)] of the layers that can save and restore a reader position."""
    out = []
    for layer in getattr(net, "layers", []) or []:
        if hasattr(layer, "get_reader_state") and hasattr(layer, "set_reader_state"):
            out.append((layer.name, layer))
    return out
