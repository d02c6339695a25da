"""File helpers shared by :mod:`caffelite.io` modules: whole-file reads (``.xz`` transparent), atomic
writes (temp file in the same folder + fsync + ``os.replace``, mode from the umask), text/binary sniffing,
guarded protobuf parsing."""

from __future__ import annotations

import contextlib
import lzma
import os
import secrets

from google.protobuf import message as pb_message

from ..errors import FileFormatError

#: refuse to decompress an ``.xz`` beyond this (a decompression bomb would otherwise exhaust memory)
MAX_FILE_BYTES = 1 << 34


def read_bytes(path) -> bytes:
    """The bytes of ``path``; a name ending in ``.xz`` is decompressed transparently."""
    path = os.fspath(path)
    if path.endswith(".xz"):
        try:
            with lzma.open(path) as f:
                data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise FileFormatError(path, f"decompresses to more than {MAX_FILE_BYTES} bytes")
            return data
        except lzma.LZMAError as e:
            raise FileFormatError(path, f"not a valid xz file ({e})") from None
        except EOFError:
            raise FileFormatError(path, "truncated xz file") from None
    with open(path, "rb") as f:
        return f.read()


def _create_beside(path, ext: str = ""):
    """(fd, name) of a new, exclusively created temporary file in ``path``'s folder (created if missing), mode
    0666 less the umask; ``ext`` ends its name."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    base = os.path.basename(path)
    if ext:
        base = base[:-len(ext)]
    while True:
        tmp = os.path.join(d, f".tmp-{base}.{os.getpid()}.{secrets.token_hex(4)}{ext}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:  # pragma: no cover - a 32-bit random name collided
            continue


@contextlib.contextmanager
def _replaced_when_done(tmp, path):
    """Rename ``tmp`` over ``path`` when the block ends cleanly; on an exception remove it, ``path`` untouched."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def atomic_open(path):
    """Open ``path`` for writing, atomically: yields a binary file object on a temporary file in the same folder;
    on a clean exit its bytes are flushed and fsynced, then it is renamed over ``path`` (on an exception it is
    removed and ``path`` is left as it was).

    The temporary file is created with mode 0666 and the process umask applies, so the result gets the
    user's usual permissions (0644 under umask 022), as ``open(path, "w")`` would give it; a missing
    folder is created, as solver snapshots need for a ``snapshot_prefix`` folder. Every file caffelite
    writes goes through here (or :func:`atomic_write`, :func:`atomic_path`).
    """
    path = os.fspath(path)
    fd, tmp = _create_beside(path)
    with _replaced_when_done(tmp, path), os.fdopen(fd, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())  # the rename must never expose a file whose bytes are not on disk yet


@contextlib.contextmanager
def atomic_path(path):
    """For writers that need a file name rather than a file object (e.g. a video encoder): yields the name of a
    temporary file in the same folder, with the same extension (encoders pick the container from it) and already
    created (the writer overwrites it); on a clean exit that file is fsynced and renamed over ``path``, on an
    exception it is removed and ``path`` is left as it was. Its mode comes from the umask, as with
    :func:`atomic_open`."""
    path = os.fspath(path)
    fd, tmp = _create_beside(path, os.path.splitext(path)[1])
    os.close(fd)
    with _replaced_when_done(tmp, path):
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path, data) -> None:
    """Write ``data`` (bytes, str (UTF-8), or an iterable of bytes-like chunks) to ``path`` atomically
    (see :func:`atomic_open`)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_open(path) as f:
        if isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            for chunk in data:
                f.write(chunk)


def save_png(image, path) -> None:
    """Save a PIL image as a PNG file at ``path``, atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        image.save(f, format="PNG")


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


def check_strings(msg, source) -> None:
    """Check every string field (BlobProto skipped) is valid UTF-8: protobuf accepts a corrupt one at parse
    time and fails much later (UnicodeDecodeError when copied); report it here, naming the file."""
    try:
        _walk_strings(msg)
    except UnicodeDecodeError:
        raise FileFormatError(source, "corrupt file: a string field is not valid UTF-8") from None


def _walk_strings(msg):
    for fd, val in msg.ListFields():
        if fd.message_type is None:
            if fd.type == fd.TYPE_STRING:  # upb hands back bytes for a string that is not valid UTF-8
                if any(isinstance(v, bytes) for v in (val if fd.is_repeated else (val,))):
                    raise UnicodeDecodeError("utf-8", b"", 0, 1, f"field {fd.name}")
            continue
        if fd.message_type.name == "BlobProto":
            continue
        for sub in (val if fd.is_repeated else (val,)):
            _walk_strings(sub)
