"""Leftovers of our own are cleaned (issue 34, item 3, the last bullet but three).

- A full disk during `ti2v-jax batch` (ENOSPC while writing a claim, a video or its metadata)
  ends the run with one line naming the file, and leaves no claim, no `.claims`, no
  temporary, and no `out/` that the run made and left empty.
- `--out` naming a symbolic link: the video is written where the link points and the link
  stays a link; nothing `.old` remains.
- A killed writer's temporaries beside a video (today's names and earlier versions') are
  removed by the next save to the same destination, only when their writer is gone.

File-level cases call `io` and `claims` directly; the batch cases run the shipped default
model with the smallest settings (one compile, shared through the module's pipeline).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ti2v_jax import claims as claims_mod
from ti2v_jax import io
from ti2v_jax.claims import Claims
from ti2v_jax.errors import InputError

TINY = {"num_new_frames": 1, "steps": 1, "resample": 0}


def _frames(t=3, h=8, w=10, value=None) -> np.ndarray:
    rng = np.random.RandomState(t)
    f = (rng.rand(t, h, w, 3) * 255).astype(np.uint8)
    if value is not None:
        f[:] = value
    return f


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _names(d: Path) -> list:
    return sorted(p.name for p in d.iterdir())


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as a writer's flush raises it: no file name


# ----------------------------------------------------------------------------- symbolic links


def test_png_output_through_a_link_to_an_empty_folder_keeps_the_link(tmp_path):
    real = tmp_path / "scratch" / "run1"
    real.mkdir(parents=True)
    real.chmod(0o2775)  # e.g. a group's folder: kept
    link = tmp_path / "out"
    link.symlink_to(real, target_is_directory=True)
    assert io.check_output_path(link) == "png"
    assert io.save_video(_frames(3), link) == link
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _names(real) == ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    assert _names(tmp_path) == ["out", "scratch"] and _names(real.parent) == ["run1"]  # nothing .old
    # Again, over the frames now there (fewer frames): replaced, through the link, nothing left.
    io.save_video(_frames(2, value=7), str(link) + "/")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _names(real) == ["frame_0000.png", "frame_0001.png"]
    assert (io.read_video(link) == 7).all()
    assert real.stat().st_mode & 0o7777 == 0o2775
    assert _names(tmp_path) == ["out", "scratch"] and _names(real.parent) == ["run1"]


def test_file_output_through_a_link_keeps_the_link(tmp_path):
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "real.gif"
    real.write_bytes(b"old")
    link = tmp_path / "v.gif"
    link.symlink_to(real)
    io.save_video(_frames(2, value=100), link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes()[:3] == b"GIF"
    dangling = tmp_path / "w.gif"  # a link to a file not made yet: made there, as open() would
    dangling.symlink_to(tmp_path / "data" / "new.gif")
    io.save_video(_frames(2), dangling)
    assert dangling.is_symlink() and (tmp_path / "data" / "new.gif").is_file()
    assert _names(tmp_path) == ["data", "v.gif", "w.gif"] and _names(tmp_path / "data") == ["new.gif", "real.gif"]


def test_a_link_loop_is_refused_in_one_line(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    b.symlink_to(a)
    with pytest.raises(InputError) as e:
        io.save_video(_frames(2), a)
    print(e.value)
    assert "loop of symbolic links" in str(e.value) and "\n" not in str(e.value)
    assert _names(tmp_path) == ["a", "b"]


# ----------------------------------------------------------------------------- killed writers


def test_killed_writers_temporaries_are_removed_by_the_next_save(tmp_path):
    host, dead, me = socket.gethostname(), _dead_pid(), os.getpid()
    target = tmp_path / "v.gif"
    killed = [
        f".v.gif.tmp-{host}-{dead}-0123abcd.gif",  # today's names
        f".v.gif.{dead}.0123abcd.tmp.gif",  # earlier versions': pid only
        f".v.gif.{dead}.0123abcd.tmp",
        ".v.gif.4567abcd.old",  # earlier versions' swapped-out folder: no pid in the name
    ]
    kept = [
        f".v.gif.tmp-{host}-{me}-89abcdef.gif",  # a writer still at work
        f".v.gif.{me}.89abcdef.tmp.gif",
        f".v.gif.tmp-elsewhere-{dead}-0123abcd.gif",  # another host's: cannot tell, kept
        f".w.gif.{dead}.0123abcd.tmp.gif",  # another video's
        ".v.gif.notes",  # not a name of ours
        "v.gif.old",
    ]
    for n in killed + kept:
        (tmp_path / n).write_bytes(b"x" * 100)
    (tmp_path / ".v.gif.4567abcd.old").unlink()
    (tmp_path / ".v.gif.4567abcd.old").mkdir()
    (tmp_path / ".v.gif.4567abcd.old" / "frame_0000.png").write_bytes(b"x")
    io.save_video(_frames(2), target)
    assert _names(tmp_path) == sorted(kept + ["v.gif"])


def test_a_link_left_by_an_earlier_version_is_unlinked_not_followed(tmp_path):
    """Earlier versions renamed the user's link to `.frames.<hex>.old` and could not remove it."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("the user's")
    (tmp_path / ".frames.0123abcd.old").symlink_to(real, target_is_directory=True)
    (tmp_path / "frames").mkdir()
    io.save_video(_frames(2), tmp_path / "frames")
    assert _names(tmp_path) == ["frames", "real"] and (real / "keep.txt").read_text() == "the user's"
    assert _names(tmp_path / "frames") == ["frame_0000.png", "frame_0001.png"]


# ----------------------------------------------------------------------------- a full disk, file by file


@pytest.mark.parametrize("kind", ["gif", "mp4", "png"])
def test_a_full_disk_while_saving_leaves_nothing_and_names_the_video(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "_write_gif", _enospc)
    monkeypatch.setattr(io, "_write_mp4", _enospc)
    monkeypatch.setattr(io.Image.Image, "save", _enospc)
    target = tmp_path / ("v" if kind == "png" else f"v.{kind}")
    with pytest.raises(OSError) as e:
        io.save_video(_frames(2), target)
    print(e.value)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert _names(tmp_path) == []


class _FullDiskOS:
    """`os` for the claims module, on a full disk: a claim file is made, its record is not written."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def fdopen(fd, *args, **kwargs):
        os.close(fd)
        _enospc()


def test_a_claim_whose_record_cannot_be_written_is_removed(tmp_path, monkeypatch):
    c = Claims(tmp_path, timeout=60)
    assert _names(tmp_path) == []  # nothing written before the first claim
    monkeypatch.setattr(claims_mod, "os", _FullDiskOS())
    try:
        with pytest.raises(OSError) as e:
            c.acquire("a")
        print(e.value)
        assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / ".claims" / "a.claim")
        assert not (tmp_path / ".claims" / "a.claim").exists()
    finally:
        monkeypatch.undo()
        c.close()
    assert _names(tmp_path) == []


def test_claims_made_and_closed_without_a_claim_leave_nothing(tmp_path):
    c = Claims(tmp_path, timeout=60)
    assert _names(tmp_path) == []
    c.close()
    assert _names(tmp_path) == []


# ----------------------------------------------------------------------------- a full disk during a batch


@pytest.fixture(scope="module")
def pipe():
    from ti2v_jax.pipeline import TI2VZeroPipeline
    return TI2VZeroPipeline.from_pretrained()


def _manifest(root: Path, ids=("a", "b")) -> Path:
    img = root / "start.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype(np.uint8)).save(img)
    m = root / "pairs.jsonl"
    m.write_text("".join(json.dumps({"id": i, "image": str(img), "prompt": "x"}) + "\n" for i in ids))
    return m


def _run(pipe, manifest, out, **kw):
    from ti2v_jax import batch
    kw = {"defaults": TINY, "batch_size": 1, "parallel": "none", "fmt": "gif", "progress": False, **kw}
    return batch.run_batch(pipe, manifest, out, **kw)


@pytest.mark.slow  # compiles the default model's program once for the module
@pytest.mark.parametrize("where", ["claim", "video", "metadata"])
def test_a_full_disk_during_a_batch_leaves_nothing(where, pipe, tmp_path, monkeypatch):
    m = _manifest(tmp_path)
    out = tmp_path / "out"
    if where == "claim":
        monkeypatch.setattr(claims_mod, "os", _FullDiskOS())
    elif where == "video":
        monkeypatch.setattr(io, "_write_gif", _enospc)
    else:
        from ti2v_jax import atomic
        monkeypatch.setattr(atomic, "write_json", _enospc)
    with pytest.raises(OSError) as e:
        _run(pipe, m, out)
    print(e.value)
    assert e.value.errno == errno.ENOSPC and e.value.filename is not None
    named = {"claim": out / ".claims" / "a.claim", "video": out / "a.gif", "metadata": out / "a.json"}[where]
    assert e.value.filename == str(named)
    assert not out.exists()  # made by the run, left empty: removed
    assert _names(tmp_path) == ["pairs.jsonl", "start.png"]


@pytest.mark.slow
def test_a_full_disk_keeps_a_folder_the_user_made_and_what_was_done(pipe, tmp_path, monkeypatch):
    m = _manifest(tmp_path, ("a", "b"))
    out = tmp_path / "out"
    out.mkdir()
    real = io._write_gif
    calls = []

    def second_fails(frames, path, fps):
        calls.append(path)
        if len(calls) > 1:
            _enospc()
        real(frames, path, fps)

    monkeypatch.setattr(io, "_write_gif", second_fails)
    with pytest.raises(OSError) as e:
        _run(pipe, m, out)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(out / "b.gif")
    assert _names(out) == ["a.gif", "a.json"]  # the item done is kept; b: no claim, no temporary
    monkeypatch.undo()
    res = _run(pipe, m, out)  # space again: the rerun does b only
    assert res.done == ["b"] and res.skipped == ["a"]
    assert _names(out) == ["a.gif", "a.json", "b.gif", "b.json"]


@pytest.mark.slow
def test_cli_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from ti2v_jax import cli
    m = _manifest(tmp_path, ("a",))
    monkeypatch.setattr(claims_mod, "os", _FullDiskOS())
    rc = cli.main(["batch", "--manifest", str(m), "--out-dir", str(tmp_path / "out"), "--no-progress",
                   "--parallel", "none", "--num-new-frames", "1", "--steps", "1", "--resample", "0"])
    err = capsys.readouterr().err
    print(err)
    assert rc == 2 and err.count("\n") == 1 and "No space left on device" in err and "a.claim" in err
    assert _names(tmp_path) == ["pairs.jsonl", "start.png"]
