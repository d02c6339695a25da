/* caffelite._native._cbn: BatchNorm / ReLU kernels for the CPU (placeholder module, filled in by a later
 * change; the Python side does not use it yet). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef cbn_module = {PyModuleDef_HEAD_INIT, "_cbn", "BatchNorm/ReLU kernels (ctypes).", -1, NULL};

PyMODINIT_FUNC PyInit__cbn(void) { return PyModule_Create(&cbn_module); }
