"""Workers sharing one output folder claim items, so each item is done once (issue 26 item 5).

Unit tests of `ti2v_jax.claims.Claims` (no model), then batch runs with the shipped default model
and the smallest settings: a fresh claim is respected, a stale one (or one whose process
is gone) is taken over, and two worker processes started together on one folder do
every item exactly once between them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ti2v_jax import batch
from ti2v_jax.claims import Claims

ROOT = Path(__file__).resolve().parents[1]
TINY = {"num_new_frames": 1, "steps": 1, "resample": 0}


def _write_claim(out: Path, item_id: str, *, host="elsewhere", pid=1, age=0.0):
    d = out / ".claims"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{item_id}.claim"
    p.write_text(json.dumps({"host": host, "pid": pid, "token": "other", "time": "then"}))
    if age:
        t = time.time() - age
        os.utime(p, (t, t))
    return p


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- _Claims


def test_claim_acquire_release(tmp_path):
    a = Claims(tmp_path, timeout=60)
    b = Claims(tmp_path, timeout=60)
    try:
        assert a.acquire("x")
        owner = json.loads((tmp_path / ".claims" / "x.claim").read_text())
        assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid() and owner["token"] == a.token
        assert not b.acquire("x")  # held by a live worker (this very process)
        b.release("x")  # not b's: stays
        assert (tmp_path / ".claims" / "x.claim").exists()
        a.release("x")
        assert not (tmp_path / ".claims" / "x.claim").exists()
        assert b.acquire("x")
        assert a.acquire("y")
    finally:
        a.close()
        b.close()
    assert not (tmp_path / ".claims").exists()  # the last to close released x and y and removed the folder


def test_stale_and_orphaned_claims_are_taken_over(tmp_path):
    c = Claims(tmp_path, timeout=60)
    try:
        _write_claim(tmp_path, "fresh")
        _write_claim(tmp_path, "old", age=120)
        _write_claim(tmp_path, "orphan", host=socket.gethostname(), pid=_dead_pid())
        _write_claim(tmp_path, "alive-here", host=socket.gethostname(), pid=os.getppid())
        assert not c.acquire("fresh")
        assert not c.acquire("alive-here")
        assert c.acquire("old")
        assert c.acquire("orphan")
        for i in ("old", "orphan"):
            assert json.loads((tmp_path / ".claims" / f"{i}.claim").read_text())["token"] == c.token
    finally:
        c.close()


def test_one_winner_among_racing_workers(tmp_path):
    """Eight workers race for 20 items, some with stale claims: each item goes to one."""
    for i in range(0, 20, 3):
        _write_claim(tmp_path, f"i{i}", age=1000)
    workers = [Claims(tmp_path, timeout=60) for _ in range(8)]
    won = [[] for _ in workers]
    start = threading.Barrier(len(workers))

    def run(k):
        start.wait()
        won[k] = [f"i{i}" for i in range(20) if workers[k].acquire(f"i{i}")]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = sorted(x for w in won for x in w)
    assert flat == sorted(f"i{i}" for i in range(20))
    for w in workers:
        w.close()


def test_held_claims_are_refreshed(tmp_path):
    c = Claims(tmp_path, timeout=0.4)  # refreshed every 0.1 s
    try:
        assert c.acquire("x")
        p = tmp_path / ".claims" / "x.claim"
        os.utime(p, (1, 1))
        deadline = time.time() + 10
        while p.stat().st_mtime < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert p.stat().st_mtime > time.time() - 60
        other = Claims(tmp_path, timeout=0.4)
        time.sleep(0.6)  # longer than the timeout, but refreshed meanwhile
        assert not other.acquire("x")
        other.close()
    finally:
        c.close()
    with pytest.raises(ValueError, match="claim_timeout"):
        Claims(tmp_path, timeout=0)


# ----------------------------------------------------------------------------- batch runs


def _manifest(root: Path, n: int) -> Path:
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.RandomState(i)
        Image.fromarray((rng.rand(40, 40, 3) * 255).astype(np.uint8)).save(root / "imgs" / f"{i}.png")
        rows.append({"id": f"c{i}", "image": f"imgs/{i}.png", "prompt": f"thing {i}"})
    m = root / "pairs.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m


@pytest.fixture(scope="module")
def pipe():
    from ti2v_jax.pipeline import TI2VZeroPipeline
    return TI2VZeroPipeline.from_pretrained()


def _run(pipe, manifest, out, **kw):
    kw = {"defaults": TINY, "batch_size": 1, "parallel": "none", "fmt": "png", "progress": False, **kw}
    return batch.run_batch(pipe, manifest, out, **kw)


@pytest.mark.slow  # compiles the default model's program (about a minute here)
def test_fresh_claim_respected_stale_claim_taken_over(pipe, tmp_path):
    m = _manifest(tmp_path, 3)
    out = tmp_path / "out"
    _write_claim(out, "c0")  # another worker, working on it right now
    _write_claim(out, "c1", age=3600)  # a worker that died an hour ago
    (out / ".c1.999.deadbeef.tmp").mkdir()  # ... leaving a half-written PNG folder
    res = _run(pipe, m, out)
    assert res.claimed == ["c0"] and sorted(res.done) == ["c1", "c2"]
    assert "1 in progress in another worker" in res.summary()
    assert not (out / "c0.json").exists() and (out / "c1.json").exists()
    assert not (out / ".c1.999.deadbeef.tmp").exists()
    assert sorted(p.name for p in (out / ".claims").iterdir()) == ["c0.claim"]  # ours released
    meta = json.loads((out / "c1.json").read_text())
    assert meta["worker"] == {"host": socket.gethostname(), "pid": os.getpid()}
    # The other worker finished c0 meanwhile and released its claim: a rerun skips it.
    (out / ".claims" / "c0.claim").unlink()
    res = _run(pipe, m, out, claim_timeout=None)  # no claims: one worker per folder
    assert sorted(res.done) == ["c0"] and sorted(res.skipped) == ["c1", "c2"]


@pytest.mark.slow  # two processes, each loading and compiling the default model
def test_two_worker_processes_do_each_item_once(tmp_path):
    n = 8
    m = _manifest(tmp_path, n)
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import json, sys
        from ti2v_jax import batch
        from ti2v_jax.pipeline import TI2VZeroPipeline
        pipe = TI2VZeroPipeline.from_pretrained()
        res = batch.run_batch(pipe, {str(m)!r}, {str(out)!r}, defaults={TINY!r}, batch_size=1,
                              parallel="none", fmt="gif", progress=False)
        print("RESULT " + json.dumps({{"done": res.done, "claimed": res.claimed, "skipped": res.skipped,
                                      "errors": res.errors}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr[-3000:]
        line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    done = [sorted(r["done"]) for r in results]
    print(f"worker 1 did {done[0]}, worker 2 did {done[1]}")
    assert sorted(done[0] + done[1]) == [f"c{i}" for i in range(n)]  # every item, once
    assert not results[0]["errors"] and not results[1]["errors"]
    for r in results:  # what a worker did not do, the other did or was doing
        assert sorted(r["done"] + r["claimed"] + r["skipped"]) == [f"c{i}" for i in range(n)]
    pids = {json.loads((out / f"c{i}.json").read_text())["worker"]["pid"] for i in range(n)}
    assert pids <= {procs[0].pid, procs[1].pid}
    for i in range(n):
        assert json.loads((out / f"c{i}.json").read_text())["worker"]["pid"] == \
            procs[0 if f"c{i}" in done[0] else 1].pid
    assert not list(out.glob(".*"))  # no claims, no temporaries
