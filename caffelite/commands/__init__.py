"""Subcommands of the ``caffelite`` tool; see :mod:`caffelite.cli`."""
