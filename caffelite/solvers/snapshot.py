"""Snapshots in Caffe's formats, written atomically, plus a sidecar that makes resume exact.

Files for a snapshot at iteration N (Caffe's names, docs/jacinto-spec.md §h):

* ``<prefix>_iter_N.caffemodel``: the TRAIN net's NetParameter with blobs (``net.to_proto``), in
  caffe-jacinto's form (raw FLOAT) by default or BVLC's (packed ``data``) when asked or when the solver has
  ``store_blobs_in_old_format: true``; diffs too with ``snapshot_diff``.
* ``<prefix>_iter_N.solverstate``: ``SolverState{iter, learned_net, history[], current_step}``, readable by
  Caffe; history is one blob per learnable param (two for AdaDelta/Adam: all first halves, then seconds).
* ``<prefix>_iter_N.solverstate.extra.npz``: caffelite's extra state, which Caffe ignores: the solver type and
  net name (to refuse a state from another solver or net), the random generator state, every data layer's
  reader position (``get_reader_state``/``set_reader_state``) and each state provider's value. No pickle:
  arrays are npz members, everything else is a JSON manifest.

Each file is written to a temporary name in the same folder, fsynced and renamed over the target
(:func:`caffelite.io.files.atomic_open`), in the order caffemodel, sidecar, solverstate: the ``.solverstate``
appears last, so its presence implies complete companions, and a crash at any moment leaves the previous
snapshot intact and the newest complete one findable (:func:`latest_snapshot`). A state without its sidecar
(written by Caffe, or copied without it) still resumes, with one warning naming what starts fresh.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .. import backend
from .. import log as glog
from ..errors import FileFormatError, SolverError
from ..io.files import atomic_open, atomic_write
from ..io.blobs import array_to_blob, blob_to_array
from . import netutil

SIDECAR_SUFFIX = ".extra.npz"


def snapshot_form(solver, form=None):
    if form:
        return form
    return "bvlc" if solver.param.store_blobs_in_old_format else "jacinto"


def _prefix(solver):
    return f"{solver.param.snapshot_prefix}_iter_{solver.iter}"


def model_bytes(net, form, write_diff=False) -> bytes:
    """The serialized caffemodel of ``net`` in ``form`` ("jacinto" or "bvlc")."""
    try:
        proto = net.to_proto(form=form, write_diff=write_diff)
    except TypeError:
        proto = net.to_proto(form)
    return proto.SerializeToString()


def state_proto(solver, model_filename, form):
    """The SolverState message of ``solver`` (BVLC's class for the BVLC form; the wire format is the same)."""
    from ..proto import caffe_pb2, dialect
    pb = dialect("bvlc") if form == "bvlc" else caffe_pb2
    st = pb.SolverState()
    st.iter = solver.iter
    st.learned_net = model_filename
    # Caffe's order: every param's first history blob, then (AdaDelta/Adam) every second one.
    for k in range(solver.history_factor):
        for h in solver.history:
            st.history.append(array_to_blob(backend.to_numpy(h[k]), form=form, pb=pb))
    st.current_step = solver.schedule.current_step
    return st


def write_snapshot(solver, form=None):
    """Write the caffemodel, solverstate and sidecar of ``solver``'s current iteration; returns the state path."""
    form = snapshot_form(solver, form)
    if solver.param.snapshot_format == 0:  # HDF5
        raise SolverError("snapshot_format: HDF5 is not supported; use BINARYPROTO")
    base = _prefix(solver)
    model = base + ".caffemodel"
    glog.info(f"Snapshotting to binary proto file {model}", "solver.cpp:464")
    os.makedirs(os.path.dirname(os.path.abspath(model)), exist_ok=True)  # a prefix like "snapshots/run1"
    # streamed from the blobs (io.write_weights with arrays=): same bytes as model_bytes, no protobuf copy
    solver.net.save(model, form, write_diff=bool(solver.param.snapshot_diff))
    state = base + ".solverstate"
    glog.info(f"Snapshotting solver state to binary proto file {state}", "sgd_solver.cpp:284")
    # the sidecar before the state: a .solverstate on disk always has its companions (see the module doc)
    write_sidecar(solver, state + SIDECAR_SUFFIX)
    atomic_write(state, state_proto(solver, model, form).SerializeToString())
    solver._run_hooks("on_snapshot", path=model)
    return state


def is_complete(state_path) -> bool:
    """True when the ``.solverstate`` at ``state_path`` has its caffemodel and its sidecar next to it."""
    base = state_path[:-len(".solverstate")] if state_path.endswith(".solverstate") else state_path
    return os.path.exists(base + ".caffemodel") and os.path.exists(state_path + SIDECAR_SUFFIX)


def latest_snapshot(prefix):
    """The newest complete ``<prefix>_iter_N.solverstate`` (largest N with its caffemodel and sidecar), or None,
    for resuming an interrupted run from its last snapshot.

    When no state of ``prefix`` has a sidecar (snapshots written by Caffe), the newest one with its caffemodel
    is returned; its resume warns what starts fresh (:func:`restore`)."""
    import glob
    import re
    found = []
    for path in glob.glob(glob.escape(prefix) + "_iter_*.solverstate"):
        m = re.search(r"_iter_(\d+)\.solverstate$", path)
        if m and os.path.exists(path[:-len(".solverstate")] + ".caffemodel"):
            found.append((int(m.group(1)), os.path.exists(path + SIDECAR_SUFFIX), path))
    if any(c for _, c, _ in found):
        found = [f for f in found if f[1]]
    return max(found)[2] if found else None


# -- the sidecar ----------------------------------------------------------------------------------------
def _pack(obj, key, arrays):
    """JSON-able structure for ``obj``; arrays go to ``arrays[key]`` and leave a marker."""
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        arrays[key] = backend.to_numpy(obj)
        return {"__array__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _pack(v, f"{key}/{i}", arrays)] for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, f"{key}/{i}", arrays) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise SolverError(f"cannot save solver state value of type {type(obj).__name__} at '{key}'")


def _unpack(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        return {k: _unpack(v, arrays) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    return obj


def _readers(solver):
    nets = [("train", solver.net)] + [(f"test{k}", n) for k, n in enumerate(solver.test_nets)]
    for tag, net in nets:
        for name, layer in netutil.data_layers_with_state(net):
            yield f"{tag}/{name}", layer


def write_sidecar(solver, path):
    arrays = {}
    manifest = {
        "format": 1,
        "solver_type": solver.type,
        "net_name": netutil.net_name(solver.net),
        "iter": solver.iter,
        "history_shapes": [list(h[0].shape) for h in solver.history],
        "rng": _pack(backend.rng_state(), "rng", arrays),
        "readers": {k: _pack(layer.get_reader_state(), f"reader/{k}", arrays) for k, layer in _readers(solver)},
        "providers": {n: _pack(get(), f"provider/{n}", arrays) for n, (get, _) in solver.state_providers.items()},
    }
    arrays["__manifest__"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    with atomic_open(path) as f:
        np.savez(f, **arrays)


def read_sidecar(path):
    """(manifest, arrays) of a sidecar file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        manifest = json.loads(arrays.pop("__manifest__").tobytes().decode())
    except (OSError, ValueError, KeyError) as e:
        raise FileFormatError(path, f"not a caffelite solver-state sidecar ({e})") from None
    return manifest, arrays


# -- restore --------------------------------------------------------------------------------------------
def read_state(path):
    """The SolverState message of a ``.solverstate`` file."""
    try:
        from .. import io
        reader = getattr(io, "read_solverstate", None)
    except ImportError:  # pragma: no cover - caffelite.io not there yet
        reader = None
    if reader is not None:
        return reader(path)
    from ..proto import caffe_pb2
    with open(path, "rb") as f:
        data = f.read()
    try:
        return caffe_pb2.SolverState.FromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise FileFormatError(path, f"not a SolverState protobuf ({e})") from None


def _resolve_model(learned, state_path):
    if os.path.exists(learned) or os.path.isabs(learned):
        return learned
    alt = os.path.join(os.path.dirname(state_path), os.path.basename(learned))
    return alt if os.path.exists(alt) else learned


def restore(solver, path):
    """Load a solverstate (and its learned_net, and the sidecar when present) into ``solver``."""
    st = read_state(path)
    sidecar = path + SIDECAR_SUFFIX
    manifest, arrays = read_sidecar(sidecar) if os.path.exists(sidecar) else (None, None)
    if manifest is None:
        _warn_no_sidecar(solver, path, sidecar)
    if manifest is not None:
        if manifest.get("solver_type") != solver.type:
            raise SolverError(f"{path}: the state was written by a {manifest.get('solver_type')} solver, "
                              f"this solver is {solver.type}")
        name = netutil.net_name(solver.net)
        if manifest.get("net_name") != name:
            raise SolverError(f"{path}: the state belongs to net '{manifest.get('net_name')}', not '{name}'")
    n, hf = len(solver.history), solver.history_factor
    if len(st.history) != n * hf:
        raise SolverError(f"{path}: the state has {len(st.history)} history blobs but a {solver.type} solver for "
                          f"net '{netutil.net_name(solver.net)}' needs {n * hf} ({n} learnable params × {hf}); "
                          "is it from another net or solver type?")
    loaded = []
    for j, blob in enumerate(st.history):
        i, k = j % n, j // n
        arr = blob_to_array(blob, where=f"{path} history[{j}]")
        want = solver.history[i][k].shape
        if arr.size != int(np.prod(want)):
            raise SolverError(f"{path}: history[{j}] has shape {tuple(arr.shape)} but learnable param {i} has "
                              f"{tuple(want)}; is the state from another net?")
        loaded.append((i, k, arr.reshape(want)))
    if st.HasField("learned_net") and st.learned_net:
        model = _resolve_model(st.learned_net, path)
        solver.net.copy_from(model)
    for i, k, arr in loaded:
        h = solver.history[i][k]
        h[...] = backend.asarray(arr, xp=backend.get_array_module(h), dtype=h.dtype)
    solver.iter = st.iter
    solver.schedule.current_step = st.current_step
    if manifest is not None:
        _restore_extra(solver, manifest, arrays, path)


def _warn_no_sidecar(solver, path, sidecar):
    """One warning line: a state without its sidecar (written by Caffe, or copied without it) resumes, but
    what only the sidecar holds starts fresh, so the run will not equal an uninterrupted one."""
    fresh = ["the random generator"]
    if any(True for _ in _readers(solver)):
        fresh.append("the data readers (restart at the first record)")
    fresh += [f"'{name}'" for name in solver.state_providers]
    glog.warning(f"{path}: no {os.path.basename(sidecar)} next to it; resuming without it, so "
                 f"{', '.join(fresh)} start fresh and the run will differ from an uninterrupted one",
                 "solver.cpp:450")


def _restore_extra(solver, manifest, arrays, path):
    rng = manifest.get("rng")
    if rng is not None:
        backend.set_rng_state(_unpack(rng, arrays))
    readers = manifest.get("readers", {})
    for key, layer in _readers(solver):
        if key in readers:
            layer.set_reader_state(_unpack(readers[key], arrays))
    for name, (_, setter) in solver.state_providers.items():
        if name in manifest.get("providers", {}):
            setter(_unpack(manifest["providers"][name], arrays))
        else:
            glog.warning(f"{path}: no saved state for '{name}'; it starts fresh", "solver.cpp:450")
