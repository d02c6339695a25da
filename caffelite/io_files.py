"""File helpers shared by :mod:`caffelite.io` modules: whole-file reads (``.xz`` transparent), atomic
writes (temp file in the same folder + ``os.replace``), text/binary sniffing, guarded protobuf parsing."""

from __future__ import annotations

import lzma
import os
import tempfile

from google.protobuf import message as pb_message

from .errors import FileFormatError

MAX_FILE_BYTES = 1 << 36


def read_bytes(path) -> bytes:
    """The bytes of ``path``; a name ending in ``.xz`` is decompressed transparently."""
    path = os.fspath(path)
    if path.endswith(".xz"):
        try:
            with lzma.open(path) as f:
                return f.read()
        except lzma.LZMAError as e:
            raise FileFormatError(path, f"not a valid xz file ({e})") from None
        except EOFError:
            raise FileFormatError(path, "truncated xz file") from None
    with open(path, "rb") as f:
        return f.read()


def atomic_write(path, data) -> None:
    """Write ``data`` (bytes, or an iterable of bytes-like chunks) to ``path`` atomically."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                for chunk in data:
                    f.write(chunk)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def is_text_file(data: bytes) -> bool:
    """Heuristic: prototxt is UTF-8 text without control bytes (binary protobufs nearly always have some)."""
    head = data[:4096]
    if not head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multi-byte char cut at the 4 KiB boundary is fine
            return False
    return not any(b < 9 or 13 < b < 32 for b in head)


def parse_binary(cls, data: bytes, source, what):
    try:
        return cls.FromString(data)
    except pb_message.DecodeError as e:
        raise FileFormatError(source, f"not a valid {what} (not a protobuf, or truncated: {e})") from None
    except RecursionError:
        raise FileFormatError(source, f"not a valid {what} (nesting too deep)") from None
