"""Show the GPUs caffelite can use (Caffe's ``caffe device_query``): CuPy's view of each CUDA device."""

from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("--gpu", default="all", help="device id(s) to query: 'all' (default) or e.g. 0,1")


def run(args) -> int:
    from .. import backend
    from .. import log as glog
    from ..errors import DeviceError

    if not backend.cupy_available():
        glog.info("No GPU: CuPy is not installed (pip install 'caffelite[cuda12x]'); running on the CPU",
                  "common.cpp:162")
        return 0
    n = backend.device_count()
    if n == 0:
        glog.info("No CUDA device found; running on the CPU", "common.cpp:162")
        return 0
    if args.gpu == "all":
        ids = list(range(n))
    else:
        try:
            ids = [int(s) for s in args.gpu.split(",") if s.strip()]
        except ValueError:
            raise DeviceError(f"--gpu must be 'all' or comma-separated device ids, got {args.gpu!r}") from None
    cp = backend.cupy_module()
    for i in ids:
        if not 0 <= i < n:
            raise DeviceError(f"no GPU {i}: {n} device(s) present (ids 0-{n - 1})")
        glog.info(f"Querying GPUs {i}", "caffe.cpp:112")
        props = cp.cuda.runtime.getDeviceProperties(i)
        name = props.get("name", b"?")
        name = name.decode() if isinstance(name, bytes) else str(name)
        rows = [("Device id", i), ("Major revision number", props.get("major")),
                ("Minor revision number", props.get("minor")), ("Name", name),
                ("Total global memory", props.get("totalGlobalMem")),
                ("Total shared memory per block", props.get("sharedMemPerBlock")),
                ("Total registers per block", props.get("regsPerBlock")), ("Warp size", props.get("warpSize")),
                ("Maximum threads per block", props.get("maxThreadsPerBlock")),
                ("Clock rate", props.get("clockRate")), ("Number of multiprocessors",
                                                         props.get("multiProcessorCount"))]
        for key, value in rows:
            glog.info(f"{key + ':':<32}{value}", "common.cpp:188")
    return 0
