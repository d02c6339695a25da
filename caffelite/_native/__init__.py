"""Optional compiled helpers (C sources built by ``pip install``; loaded by :mod:`caffelite.ops.native`)."""
