"""The temporaries being written right now, so that an interrupted command removes them.

Outputs are written to a temporary beside their destination and renamed into place.
Exceptions remove those temporaries where they are raised; a command ended at once by
Ctrl-C (`cli.console` never raises KeyboardInterrupt, which could land inside an import,
a garbage-collector callback or XLA's start-up) calls `remove_all()` before it exits.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path

_lock = threading.Lock()
_paths: dict[int, Path] = {}


@contextlib.contextmanager
def temporary(path):
    """Record `path` (a file or directory being written) for the duration of the block."""
    key = id(object())
    with _lock:
        _paths[key] = Path(path)
    try:
        yield path
    finally:
        with _lock:
            _paths.pop(key, None)


def remove_all() -> None:
    """Remove every recorded temporary (best effort: the process is about to exit)."""
    with _lock:
        paths = list(_paths.values())
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
