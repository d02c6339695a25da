"""The ops layering rules, checked on the source: layers call ops, never the kernels behind them.

``caffelite/ops`` owns the choice of each hot op's body (compiled kernel, named CuPy kernel, ``xp`` reference);
a layer that imported :mod:`caffelite.ops.native`, :mod:`caffelite.ops.native_bn`, :mod:`caffelite.ops.native_glue`
or :mod:`caffelite.kernels` would be making that choice itself. Only :mod:`caffelite.backend` imports CuPy, and the
native switch is read through its public function only.
"""

import ast
import pathlib

import caffelite

PKG = pathlib.Path(caffelite.__file__).parent
FORBIDDEN_IN_LAYERS = ("caffelite.ops.native", "caffelite.ops.native_bn", "caffelite.ops.native_glue",
                       "caffelite.kernels")


def _imports(path: pathlib.Path, package=None):
    """Absolute names of every module ``path`` imports (relative imports resolved against ``package``, by default
    the one ``path`` lies in; ``from X import y`` yields both ``X`` and ``X.y``, since ``y`` may be a module)."""
    if package is None:
        package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            yield base, node.lineno
            for a in node.names:
                yield f"{base}.{a.name}", node.lineno


def _hits(path, forbidden, package=None):
    return [f"{path.name}:{line} imports {name}" for name, line in _imports(path, package)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_layers_do_not_import_native_kernels_or_named_kernels():
    hits = [h for p in sorted((PKG / "layers").glob("*.py")) for h in _hits(p, FORBIDDEN_IN_LAYERS)]
    assert hits == []


def test_the_check_sees_relative_and_absolute_imports(tmp_path):
    """The walk resolves ``from ..ops import native_bn`` and ``import caffelite.kernels.pool`` (so the test
    above can fail)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from ..ops import native_bn\nimport caffelite.kernels.pool\nfrom ..ops import relu\n")
    hits = _hits(probe, FORBIDDEN_IN_LAYERS, package="caffelite.layers")
    assert len(hits) == 2 and "caffelite.ops.native_bn" in hits[0] and "caffelite.kernels.pool" in hits[1]


def test_only_backend_imports_cupy():
    hits = [h for p in sorted(PKG.rglob("*.py")) if p.name != "backend.py" or p.parent != PKG
            for h in _hits(p, ("cupy",))]
    assert hits == []


def test_the_native_switch_is_read_through_its_public_function():
    """``native.enabled(flag)`` sets it and ``native.is_enabled()`` reads it; no other module reads the private
    flag."""
    hits = [str(p.relative_to(PKG.parent)) for p in sorted(PKG.rglob("*.py"))
            if p.name != "native.py" and "_ENABLED" in p.read_text()]
    assert hits == []
