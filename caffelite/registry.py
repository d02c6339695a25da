"""One registry class for every kind of named plug-in: layer types, solvers, fillers, lr policies, commands.

Each kind keys its entries by Caffe's own strings ("Convolution", "SGD", "msra", "step", "train"). A name
registered twice with a different object is a programming error and is refused at import time, so two
modules can never silently shadow each other; registering the same object again (a module re-imported) is
allowed.
"""

from __future__ import annotations

from collections.abc import Iterator


class DuplicateRegistration(RuntimeError):
    """A name was registered twice with different objects."""


class Registry:
    """Name -> object, for one ``kind`` of plug-in ("layer type", "solver", ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict = {}

    def add(self, name, obj):
        """Register ``obj`` under ``name``; returns ``obj``. A different object under a taken name is refused."""
        old = self._items.get(name)
        if old is not None and old is not obj:
            raise DuplicateRegistration(f"{self.kind} {name!r} registered twice ({old!r} and {obj!r})")
        self._items[name] = obj
        return obj

    def decorator(self, *names):
        """A decorator registering the decorated object under each of ``names``."""

        def deco(obj):
            for n in names:
                self.add(n, obj)
            return obj

        return deco

    def get(self, name, default=None):
        return self._items.get(name, default)

    def __getitem__(self, name):
        return self._items[name]

    def __contains__(self, name) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self):
        return self._items.items()

    def names(self) -> list:
        """The registered names, sorted."""
        return sorted(self._items)
