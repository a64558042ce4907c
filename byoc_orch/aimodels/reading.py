"""Reading aiModels.json safely: only a regular file of at most MAX_FILE_BYTES, and only UTF-8.

A FIFO, device, socket or directory is refused without opening it for a blocking read, so no
path an operator (or a mistake) gives can hang the daemon or act on a device.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from byoc_orch.aimodels.limits import MAX_FILE_BYTES
from byoc_orch.aimodels.problems import ModelsFileError, Problem, UnreadableModelsFileError
from byoc_orch.aimodels.wording import show_bytes


def read_text(path: Path, source: str) -> str:
    """The text of aiModels.json; raises UnreadableModelsFileError when it cannot be read, and
    ModelsFileError when it is not UTF-8."""
    data = _read_regular_file(path, source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problem = Problem(
            None, None, None, f"line {line}: the file is not UTF-8 text", "save it as UTF-8", source
        )
        raise ModelsFileError([problem]) from None


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _read_regular_file(path: Path, source: str) -> bytes:
    """The bytes of ``path`` if it is a regular file no larger than MAX_FILE_BYTES.

    The kind is checked before opening (opening a FIFO for reading blocks until a writer comes;
    opening a device may act on it), and again on the open descriptor, which is opened
    non-blocking in case the path was swapped in between.
    """

    def refuse(message: str, fix: str) -> UnreadableModelsFileError:
        return UnreadableModelsFileError([Problem(None, None, None, message, fix, source)])

    def refuse_os(exc: OSError) -> UnreadableModelsFileError:
        return refuse(
            f"cannot read the file: {exc.strerror or exc}",
            "check the path and that byoc-orch's user may read it",
        )

    def check(status: os.stat_result) -> None:
        for is_kind, kind in _FILE_KINDS:
            if is_kind(status.st_mode):
                raise refuse(
                    f"cannot read the file: it is {kind}, not a regular file",
                    "give the path of the aiModels.json file itself",
                )
        if not stat.S_ISREG(status.st_mode):
            raise refuse(
                "cannot read the file: it is not a regular file",
                "give the path of the aiModels.json file itself",
            )
        if status.st_size > MAX_FILE_BYTES:
            raise too_large(status.st_size)

    def too_large(size: int) -> UnreadableModelsFileError:
        return refuse(
            f"the file is {show_bytes(size)}, more than the {show_bytes(MAX_FILE_BYTES)} an "
            "aiModels.json may be",
            "check that this is the right file; a real aiModels.json is a few kilobytes",
        )

    try:
        status = os.stat(path)
    except OSError as exc:
        raise refuse_os(exc) from None
    except ValueError:
        raise refuse(
            "cannot read the file: the path contains a NUL character",
            "give the path of the aiModels.json file",
        ) from None
    check(status)
    try:
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
        descriptor = os.open(path, flags)
    except OSError as exc:
        raise refuse_os(exc) from None
    try:
        check(os.fstat(descriptor))
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(descriptor, min(1 << 20, MAX_FILE_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise too_large(total)
    except OSError as exc:
        raise refuse_os(exc) from None
    finally:
        os.close(descriptor)
    return b"".join(chunks)
