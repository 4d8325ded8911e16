"""Writes that land whole or not at all: a temporary beside the destination, renamed into place.

    atomic.write_json(path, obj)                # also write_bytes, write_text
    with atomic.replacing(path) as tmp: ...     # write `tmp` however; it becomes `path` on success
    with atomic.directory(dst) as tmp: ...      # a folder, e.g. a converted checkpoint

A temporary is `.<name>.tmp-<host>-<pid>-<hex>` beside its destination (a replaced folder
waits as `.<name>.old-<host>-<pid>-<hex>`), so a later writer on this host can tell a killed
writer's leftovers from a live one's (`_remove_dead_temporaries`). A file is synced to disk
before the rename. Every temporary is recorded with `cleanup`, so a command ended at once by
Ctrl-C removes it; an error removes it where it is raised. (`io.save_video` writes videos
with these names its own way: ffmpeg needs the extension, PNG folders swap.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import uuid
from glob import escape as glob_escape
from pathlib import Path

from ti2v_jax import cleanup
from ti2v_jax.errors import InputError, OutputExistsError


def _writer() -> str:
    """"<host>-<pid>-<hex>": who writes a temporary, unique per write."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def replacing(path):
    """Yield a temporary file path beside `path`; what the block writes there replaces `path`
    (synced, then `os.replace`) when the block ends without error, and is removed otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{_writer()}")
    try:
        with cleanup.temporary(tmp):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str, encoding: str = "utf-8") -> None:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_json(path, obj, *, indent: int = 1) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent), encoding="utf-8")


# ----------------------------------------------------------------------------- folders


def _owner_alive(name: str, prefix: str) -> bool:
    """For a temporary named `prefix + "<host>-<pid>-<hex>"`: False when its writer was a process
    of this host that is gone (killed), True otherwise (alive, another host's, or unknown)."""
    host, _, rest = name[len(prefix):].rpartition("-")[0].rpartition("-")
    try:
        pid = int(rest)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _remove_dead_temporaries(dst: Path) -> None:
    """Remove what killed writers of `dst` left beside it (`.<name>.tmp-*`, `.<name>.old-*`)."""
    for kind in ("tmp", "old"):
        prefix = f".{dst.name}.{kind}-"
        for p in dst.parent.glob(glob_escape(prefix) + "*"):
            if not _owner_alive(p.name, prefix):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


@contextlib.contextmanager
def directory(dst, *, overwrite: bool = False, protect=()):
    """Yield a fresh temporary directory beside `dst`; it becomes `dst` only on success.

    An existing `dst` is an error unless `overwrite`, in which case it is swapped out
    (rename, rename, delete) only once the new one is complete. Without `overwrite`, a
    `dst` that appeared meanwhile (another writer finished first) is an error too: nothing
    is replaced. On any error the temporary directory is removed and `dst` is left as it
    was. Temporaries left by a killed writer on this host are removed first (their names
    hold host and pid). `protect`: paths that must not be replaced (e.g. the source checkpoint).
    """
    dst = Path(dst).absolute()
    for p in protect:
        p = Path(p).absolute()
        if dst == p or p.is_relative_to(dst):
            raise InputError(f"destination {dst} would replace the source {p}")

    def exists_error():
        return OutputExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")

    if dst.exists() and not overwrite:
        raise exists_error()
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(dst)
    me = _writer()
    tmp = dst.parent / f".{dst.name}.tmp-{me}"
    tmp.mkdir()
    with cleanup.temporary(tmp):  # also removed when Ctrl-C ends the command at once
        try:
            yield tmp
            if not overwrite:
                try:  # a rename onto an existing (non-empty) directory fails: no silent replacement
                    if dst.exists() or dst.is_symlink():
                        raise exists_error()
                    os.rename(tmp, dst)
                except OSError as e:
                    if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                        raise exists_error() from None
                    raise
            elif dst.exists() or dst.is_symlink():
                old = dst.parent / f".{dst.name}.old-{me}"
                os.replace(dst, old)
                os.replace(tmp, dst)
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink()
            else:
                os.replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
