"""The one registry class: duplicate names are refused for every kind of plug-in."""

import pytest

from caffelite import cli, fillers, layer
from caffelite.registry import DuplicateRegistration, Registry
from caffelite.solvers import base, lr_policy


def test_duplicate_name_with_another_object_is_refused_same_object_is_not():
    r = Registry("thing")
    r.add("a", int)
    r.add("a", int)  # a module imported twice registers the same object again
    with pytest.raises(DuplicateRegistration, match="thing 'a' registered twice"):
        r.add("a", float)
    assert r.names() == ["a"] and "a" in r and r["a"] is int and len(r) == 1


@pytest.mark.parametrize("registry, name", [
    (layer._REGISTRY, "Convolution"), (fillers._FILLERS, "msra"), (base._SOLVERS, "SGD"),
    (lr_policy._POLICIES, "step"), (cli.COMMANDS, "train"),
])
def test_every_kind_uses_it(registry, name):
    layer.registered_types()  # loads the built-in layers
    assert isinstance(registry, Registry) and name in registry
    with pytest.raises(DuplicateRegistration):
        registry.add(name, object())
