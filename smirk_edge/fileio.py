"""Files the SDK writes or hands to OpenCV: atomic writes, checked results, safe paths.

* Every result is written to a temporary file beside its target and renamed over it only when
  complete (:func:`atomic_write`, :func:`atomic_file`): a full disk, a signal or a crash leaves
  either the old file or the new one, never a truncated one. Failures raise
  :class:`~smirk_edge.errors.OutputError`.
* OpenCV never receives a path that is not valid UTF-8 (it crashes on lone surrogates, which is
  how Python spells a file name that is not UTF-8 on POSIX). Images are decoded from bytes read by
  Python and encoded to bytes written by Python; a video that must be opened by name gets a
  temporary ASCII-named link (:func:`opencv_readable_path`), a video being written gets an ASCII
  temporary name (:func:`atomic_file`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError, OutputError


def display_path(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 become ``\\xNN`` escapes."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def is_opencv_safe(path: str | os.PathLike) -> bool:
    """True when OpenCV can take ``path`` as is (a str that encodes as UTF-8)."""
    try:
        os.fspath(path).encode("utf-8")
        return True
    except (UnicodeEncodeError, TypeError):
        return False


def _tmp_name(target: Path) -> Path:
    suffix = "".join(c for c in target.suffix if c.isascii() and (c.isalnum() or c == "."))[:16]
    fd, name = tempfile.mkstemp(prefix=".smirk-edge-", suffix=".part" + suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def _fail(target: Path, exc: BaseException) -> OutputError:
    return OutputError(f"{display_path(target)}: cannot write ({type(exc).__name__}: {exc})")


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path (ASCII name, same folder, same suffix) to write; renamed to ``target``
    when the block ends without error and the file is not empty, removed otherwise."""
    target = Path(target)
    try:
        tmp = _tmp_name(target)
    except OSError as exc:
        raise _fail(target, exc) from exc
    try:
        yield tmp
        if tmp.stat().st_size == 0:
            raise OutputError(f"{display_path(target)}: nothing was written")
        os.replace(tmp, target)
    except OSError as exc:
        raise (exc if isinstance(exc, OutputError) else _fail(target, exc)) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def atomic_write(target: str | os.PathLike, data: bytes | bytearray | memoryview | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``target`` atomically; every write is checked."""
    target = Path(target)
    payload = data.encode("utf-8") if isinstance(data, str) else memoryview(data).cast("B")
    with atomic_file(target) as tmp:
        with open(tmp, "wb") as fh:
            written = fh.write(payload)
            if written != len(payload):
                raise OSError(f"short write ({written} of {len(payload)} bytes)")
            fh.flush()
            os.fsync(fh.fileno())
    return target


@contextlib.contextmanager
def opencv_readable_path(path: str | os.PathLike) -> Iterator[str]:
    """A path string OpenCV may open for reading ``path``: ``path`` itself when it is UTF-8,
    otherwise a symbolic link with an ASCII name in a private temporary folder."""
    if is_opencv_safe(path):
        yield os.fspath(path)
        return
    src = Path(path)
    if not src.is_file():
        raise InputError(f"{display_path(src)}: no such file")
    with tempfile.TemporaryDirectory(prefix="smirk-edge-") as tmp:
        link = Path(tmp) / ("input" + "".join(c for c in src.suffix if c.isascii() and c.isalnum() or c == "."))
        try:
            os.symlink(os.path.abspath(src), link)
        except OSError as exc:
            raise InputError(f"{display_path(src)}: the file name is not valid UTF-8 and no link to it can "
                             f"be made for OpenCV ({exc}); rename the file") from exc
        yield str(link)


@contextlib.contextmanager
def opencv_writable_path(target: str | os.PathLike) -> Iterator[str]:
    """A path string OpenCV may write (e.g. a ``cv2.VideoWriter``) whose file becomes ``target``
    atomically when the block ends without error. The temporary name is ASCII; when even the
    folder's name is not UTF-8 the file is written in the system's temporary folder and copied."""
    target = Path(target)
    with atomic_file(target) as tmp:
        if is_opencv_safe(tmp):
            yield str(tmp)
            return
        import shutil

        with tempfile.TemporaryDirectory(prefix="smirk-edge-") as d:
            scratch = Path(d) / ("out" + tmp.suffix)
            yield str(scratch)
            if not scratch.is_file():
                raise OutputError(f"{display_path(target)}: nothing was written")
            shutil.copyfile(scratch, tmp)


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it is writable (a probe file is written and removed).

    Raises:
        OutputError: it names a file, cannot be created, or cannot be written to.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {display_path(out)} is a file, not a folder: name a folder with -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {display_path(out)}: {exc}") from exc
    try:
        atomic_write(out / ".smirk-edge-write-test", b"ok")
        (out / ".smirk-edge-write-test").unlink()
    except (OutputError, OSError) as exc:
        raise OutputError(f"the output folder {display_path(out)} is not writable: {exc}") from exc
    return out
