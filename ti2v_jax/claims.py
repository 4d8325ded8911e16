"""Claims on batch items, so that workers sharing an output folder do each item once."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from ti2v_jax.errors import SettingsError

CLAIM_TIMEOUT = 600.0  # seconds without a refresh after which another worker may take a claim over


class Claims:
    """Claims on items, so workers sharing an output folder do each item once.

    A claim is OUT/.claims/<id>.claim, created with O_CREAT | O_EXCL (so exactly one
    worker gets it) and holding the worker's host, pid and run token. A background thread
    refreshes (touches) the held claims every `timeout / 4` seconds, also while a long
    pipeline call (or compilation) runs. A claim not refreshed for `timeout` seconds, or
    one whose process is gone (same host, pid not running), is stale: another worker may
    take it over (under an flock of the OUT/.claims directory, so two workers never both
    do). Claims are released (deleted, if still ours) when the item is saved, when it
    fails, and when the run ends in any way; the last worker out removes OUT/.claims.
    Nothing is written before the first `acquire` (OUT/.claims is made then), and a claim
    whose owner record cannot be written (a full disk) is removed at once and the error
    raised with its path, so a run that fails early leaves no claim and no empty folder.
    A worker skips items whose claim another live worker holds (`BatchResult.claimed`)
    and does not wait for them: if that worker dies, a later run takes them over. A
    failed item is released, so a worker that reaches it later in the same job retries
    it (as a rerun would). Claims assume the hosts' clocks agree to well within `timeout`
    (staleness is the claim file's age) and a filesystem with atomic O_EXCL creation.
    """

    def __init__(self, out_dir: Path, timeout: float = CLAIM_TIMEOUT):
        if not timeout > 0:
            raise SettingsError(f"claim_timeout must be > 0 seconds, got {timeout}")
        self.dir = out_dir / ".claims"  # made by the first acquire
        self.timeout = float(timeout)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.token = uuid.uuid4().hex
        self.held: set = set()
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="ti2v-jax-claims", daemon=True)

    def path(self, item_id: str) -> Path:
        return self.dir / f"{item_id}.claim"

    def acquire(self, item_id: str) -> bool:
        """Claim `item_id`; False when another live worker holds it."""
        p = self.path(item_id)
        if self._create(p):
            return True
        with self._locked():
            if not self._stale(p):
                return False
            p.unlink(missing_ok=True)  # a crashed or hung worker's claim: take it over
            return self._create(p)

    def release(self, item_id: str) -> None:
        p = self.path(item_id)
        with self._mutex:
            self.held.discard(p)
        if self._owner(p).get("token") == self.token:
            p.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop refreshing, release every claim still held, remove OUT/.claims if empty."""
        self._stop.set()
        with self._mutex:
            held = list(self.held)
        for p in held:
            try:
                self.release(p.name[:-len(".claim")])
            except OSError:  # best effort: a stale claim is taken over by the next run anyway
                pass
        try:
            self.dir.rmdir()
        except OSError:  # other workers' claims are in it (or it was never made)
            pass

    def _create(self, p: Path) -> bool:
        try:
            fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the first claim here, or another worker, finishing, removed the folder
            self.dir.mkdir(exist_ok=True)
            return self._create(p)
        record = json.dumps({"host": self.host, "pid": self.pid, "token": self.token,
                             "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        try:
            with os.fdopen(fd, "w") as f:
                f.write(record)
        except BaseException as e:  # a claim without its owner would look like another's: remove it
            p.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno is not None and e.filename is None:
                raise OSError(e.errno, e.strerror or str(e), str(p)) from None
            raise
        with self._mutex:
            self.held.add(p)
            if self._thread.ident is None:  # the first claim: start refreshing
                self._thread.start()
        return True

    @staticmethod
    def _owner(p: Path) -> dict:
        try:
            obj = json.loads(p.read_text())
            return obj if isinstance(obj, dict) else {}
        except (OSError, ValueError):
            return {}

    def _stale(self, p: Path) -> bool:
        try:
            age = time.time() - p.stat().st_mtime
        except FileNotFoundError:
            return True  # released meanwhile
        if age > self.timeout:
            return True
        owner = self._owner(p)
        if not owner and age > 5:  # unreadable for a while (a claim is written right after creation)
            return True
        if owner.get("host") == self.host and isinstance(owner.get("pid"), int) and owner["pid"] != self.pid:
            try:
                os.kill(owner["pid"], 0)
            except ProcessLookupError:
                return True  # its process is gone
            except OSError:
                pass
        return False

    def _locked(self):
        @contextlib.contextmanager
        def lock():
            try:
                import fcntl
            except ImportError:  # no flock (Windows): takeovers are unguarded
                yield
                return
            self.dir.mkdir(exist_ok=True)
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock
        return lock()

    def _refresh_loop(self):
        while not self._stop.wait(self.timeout / 4):
            with self._mutex:
                held = list(self.held)
            for p in held:
                if self._owner(p).get("token") == self.token:
                    try:
                        os.utime(p)
                    except OSError:
                        pass
