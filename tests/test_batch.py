"""ti2v_jax.batch, .manifest, .distributed: manifests, resumable sharded batch jobs, sweeps.

Cost control: one pipeline for the module with K=4 frames and tiny sampler settings
(2 new frames, 2 steps, 1 resampling), batch size 1 in-process so every in-process
run and the direct pipeline calls share ONE compiled program; a single subprocess
(4 forced CPU devices) runs the CLI over a device mesh.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ti2v_jax import batch, distributed, io, manifest

ROOT = Path(__file__).resolve().parents[1]
K = 4
TINY = dict(num_new_frames=2, steps=2, resample=1)
IDS = [f"i{i}" for i in range(7)]
BROKEN = "i3"


def _write_manifest(root: Path, ids=IDS, extra=None) -> Path:
    """Images of assorted sizes under root/imgs (relative paths), BROKEN unreadable."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for n, i in enumerate(ids):
        path = root / "imgs" / f"{i}.png"
        if i == BROKEN:
            path.write_bytes(b"this is not a png")
        else:
            rng = np.random.RandomState(n)
            Image.fromarray((rng.rand(32 + 8 * n, 40, 3) * 255).astype(np.uint8)).save(path)
        row = {"id": i, "image": f"imgs/{i}.png", "prompt": f"a thing number {n}"}
        if n == 1:
            row["seed"] = 1234
        rows.append({**row, **((extra or {}).get(i, {}))})
    m = root / "pairs.jsonl"
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return m


@pytest.fixture(scope="module")
def pipe(tiny_converted_dir):
    from ti2v_jax.pipeline import TI2VZeroPipeline
    return TI2VZeroPipeline.from_pretrained(tiny_converted_dir, num_frames=K)


def _run(pipe, manifest, out, **kw):
    kw = {"defaults": TINY, "batch_size": 1, "parallel": "none", "fmt": "png", "progress": False, **kw}
    return batch.run_batch(pipe, manifest, out, **kw)


def _complete(out: Path):
    return sorted(p.stem for p in out.glob("*.json") if (out / p.stem).is_dir())


# ----------------------------------------------------------------------------- pure parts


def test_manifest_validation(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "a", "image": "x.png", "prompt": ""}\n{"id": "A", "image": "y", "prompt": ""}\n'
                 '{"id": "../up", "image": "z", "prompt": ""}\n[1]\n{"id": "ok"\n\n{"image": "q"}\n'
                 '{"id": "b.JSON", "image": "z", "prompt": ""}\n')
    with pytest.raises(ValueError) as e:
        manifest.read_manifest(m)
    msg = str(e.value)
    print(msg)
    for part in ("line 2: id 'A' repeats line 1", "line 3: id '../up'", "line 4: expected a JSON object",
                 "line 5: not valid JSON", "line 7: id None", "line 8: id 'b.JSON'"):
        assert part in msg
    m.write_text('[{"id": 7, "image": "a.png", "prompt": "p", "steps": 3}]')
    (n, obj), = manifest.read_manifest(m)
    assert obj["id"] == "7"


def test_item_settings_precedence_and_seeds(tmp_path):
    prep = lambda obj, **kw: manifest.prepare_item(1, obj, tmp_path, size=(32, 32), multiple=2, **kw)  # noqa: E731
    it = prep({"id": "a", "image": "sub/a.png", "prompt": "p", "steps": "3", "inversion": "off"},
              defaults={"steps": 5, "guidance": 7}, overrides={"resample": 0})
    assert it.error is None and it.image == str(tmp_path / "sub" / "a.png")
    assert it.settings.to_dict() == dict(num_new_frames=15, steps=3, resample=0, guidance=7.0, eta=0.0,
                                         inversion=False, slide="pixel", baseline=False, height=32, width=32)
    assert it.seed == manifest.stable_seed("a") == 502515194
    assert prep({"id": "a", "image": "a", "prompt": "", "seed": 5}).seed == 5
    assert prep({"id": "a", "image": "a", "prompt": "", "seed": 5}, overrides={"seed": 9}).seed == 9
    assert manifest.stable_seed("a", 1) != manifest.stable_seed("a")
    for bad, why in [({"prompt": "p"}, "'image' is missing"), ({"image": "a"}, "'prompt' is missing"),
                     ({"image": "a", "prompt": "", "steps": 0}, "steps must be in [1, 1000]"),
                     ({"image": "a", "prompt": "", "slide": "diag"}, "slide must be one of"),
                     ({"image": "a", "prompt": "", "height": 33}, "multiples of 2"),
                     ({"image": "a", "prompt": "", "stpes": 3}, "unknown field(s) ['stpes']"),
                     ({"image": "a", "prompt": "", "seed": -1}, "seed must be in")]:
        assert why in prep({"id": "a", **bad}).error


def test_shares_and_process_env(monkeypatch):
    ids = [f"x{i:02d}" for i in range(11)][::-1]
    parts = [distributed.share(ids, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids) and sum(map(len, parts)) == len(ids)
    monkeypatch.setenv("TI2V_PROCESS_INDEX", "2")
    monkeypatch.setenv("TI2V_PROCESS_COUNT", "3")
    assert distributed.process_share() == (2, 3)
    assert distributed.process_share(0, 1) == (0, 1)
    with pytest.raises(ValueError, match="index 3 / count 3"):
        distributed.process_share(3)


def test_processes_get_the_cpu_thread_pool_of_one_process(monkeypatch):
    """PJRT_NPROC: max(cores, processes x CPU devices per process), unless the user set it
    (the two-process batch test shows the frames it keeps equal)."""
    cores = len(os.sched_getaffinity(0))
    for var in ("PJRT_NPROC", "NPROC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "cpu_only", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=2")
    assert distributed.local_cpu_devices() == 2
    assert distributed.match_cpu_threads(cores) == 2 * cores and os.environ["PJRT_NPROC"] == str(2 * cores)
    monkeypatch.delenv("PJRT_NPROC")
    assert distributed.match_cpu_threads(1) == cores  # never below the cores XLA would use anyway
    monkeypatch.setenv("PJRT_NPROC", "3")
    assert distributed.match_cpu_threads(8) is None and os.environ["PJRT_NPROC"] == "3"
    monkeypatch.delenv("PJRT_NPROC")
    monkeypatch.setenv("XLA_FLAGS", "")
    assert distributed.local_cpu_devices() == 1
    assert distributed.match_cpu_threads(4) is None and "PJRT_NPROC" not in os.environ  # GPU/TPU hosts: untouched
    monkeypatch.setattr(distributed, "cpu_only", lambda: True)
    assert distributed.match_cpu_threads(4 * cores) == 4 * cores


def test_grid():
    grid = manifest.parse_grid(["resample=0,2", "inversion=on,off"], '{"guidance": [7.5, 9]}')
    assert grid == {"guidance": [7.5, 9.0], "resample": [0, 2], "inversion": [True, False]}
    names = [manifest.combo_name(c) for c in manifest.sweep_combos(grid)]
    assert len(names) == 8 and names[0] == "guidance=7.5_resample=0_inversion=on"
    for bad in (["resample"], ["resample=1,1"], ["stpes=1"], ["slide=diag"]):
        with pytest.raises(ValueError):
            manifest.parse_grid(bad)


# ----------------------------------------------------------------------------- jobs


@pytest.mark.slow
def test_resume_split_and_lockstep(pipe, tmp_path, monkeypatch):
    """Two simulated processes, one killed midway and rerun; then one process over the lot."""
    m = _write_manifest(tmp_path)
    out = tmp_path / "out"
    real_save, saves = io.save_video, []

    def save(video, path, fps=8, kill_at=None):
        saves.append(Path(path).name)
        if len(saves) == kill_at:
            raise KeyboardInterrupt  # as if killed while writing
        return real_save(video, path, fps)

    shares = [distributed.share(IDS, i, 2) for i in range(2)]
    assert shares == [["i0", "i2", "i4", "i6"], ["i1", "i3", "i5"]]
    monkeypatch.setattr(io, "save_video", lambda *a, **k: save(*a, **k, kill_at=2))
    with pytest.raises(KeyboardInterrupt):
        _run(pipe, m, out, process_index=0, process_count=2)
    assert _complete(out) == ["i0"]
    assert sorted(p.name for p in out.iterdir()) == ["i0", "i0.json"]  # nothing partial of i2
    (out / ".i4.json.99.abcd1234.tmp").write_text("{")  # what a SIGKILL would leave
    first_mtime = (out / "i0.json").stat().st_mtime_ns

    monkeypatch.setattr(io, "save_video", lambda *a, **k: save(*a, **k))
    saves.clear()
    r1 = _run(pipe, m, out, process_index=1, process_count=2)
    assert sorted(r1.done) == ["i1", "i5"] and [e["id"] for e in r1.errors] == [BROKEN]
    assert sorted(saves) == ["i1", "i5"]

    saves.clear()
    r0 = _run(pipe, m, out, process_index=0, process_count=2)  # the rerun of the killed process
    assert sorted(r0.done) == ["i2", "i4", "i6"] and r0.skipped == ["i0"] and not r0.errors
    assert sorted(saves) == ["i2", "i4", "i6"]  # nothing redone
    assert (out / "i0.json").stat().st_mtime_ns == first_mtime
    assert not set(r0.done) & set(r1.done)
    assert _complete(out) == [i for i in IDS if i != BROKEN]
    assert not list(out.glob(".*"))  # no temporaries, the stale one removed
    err = [json.loads(l) for l in (out / "errors-1.jsonl").read_text().splitlines()]
    assert [(e["id"], e["stage"], e["line"]) for e in err] == [(BROKEN, "image", 4)]
    assert "not a readable image" in err[0]["reason"]
    meta = json.loads((out / "i1.json").read_text())
    assert meta["seed"] == 1234 and meta["settings"]["steps"] == 2 and meta["frames"] == 3
    assert meta["process"] == [1, 2] and meta["num_frames"] == K and meta["output"] == "i1"

    # One process over the finished job, in lockstep with a (simulated) peer that has 2
    # items more in the group than this one (BROKEN, pending again: a rerun retries it):
    # nothing is redone, and as BROKEN fails to load, all 3 calls here are dummies that
    # keep the peer's 3 mesh calls company.
    monkeypatch.setattr(batch, "allgather_counts", lambda c: np.stack([c, c + 2]))
    saves.clear()
    r = _run(pipe, m, out, process_index=0, process_count=1, lockstep=True)
    assert (r.done, len(r.skipped), [e["id"] for e in r.errors], r.calls, saves) == ([], 6, [BROKEN], 3, [])
    assert sorted(p.name for p in out.glob("errors*")) == ["errors.jsonl"]


@pytest.mark.slow
def test_batch_equals_single_calls_and_stale(pipe, tmp_path):
    """A job's videos are exactly the pipeline's for the same seeds; changed settings are flagged."""
    m = _write_manifest(tmp_path, ids=["i0", "i1"])
    r = _run(pipe, m, tmp_path / "out", max_items=1)  # a job in chunks
    assert r.done == ["i0"] and r.calls == 1
    r = _run(pipe, m, tmp_path / "out")
    assert (r.done, r.skipped, r.calls) == (["i1"], ["i0"], 1)
    for i, seed in (("i0", manifest.stable_seed("i0")), ("i1", 1234)):
        meta = json.loads((tmp_path / "out" / f"{i}.json").read_text())
        ref = pipe(str(tmp_path / "imgs" / f"{i}.png"), meta["prompt"], seed=seed, num_new_frames=2,
                   num_inference_steps=2, resample_iters=1).frames
        np.testing.assert_array_equal(io.read_video(tmp_path / "out" / i), ref)
    r = _run(pipe, m, tmp_path / "out", defaults={**TINY, "guidance": 5})
    assert r.calls == 0 and sorted(r.stale) == ["i0", "i1"] and "WARNING 2" in r.summary()


@pytest.mark.slow
def test_sweep_folders_and_resume(pipe, tmp_path):
    m = _write_manifest(tmp_path, ids=["i0"], extra={"i0": {"inversion": False}})
    grid = manifest.parse_grid(["inversion=on,off"])
    res = batch.run_sweep(pipe, m, tmp_path / "sw", grid, defaults=TINY, batch_size=1, parallel="none",
                          fmt="gif", progress=False)
    assert list(res) == ["inversion=on", "inversion=off"]
    for name, r in res.items():
        assert r.done == ["i0"]
        meta = json.loads((tmp_path / "sw" / name / "i0.json").read_text())
        assert meta["settings"]["inversion"] is (name == "inversion=on")  # the grid beats the item
        assert io.read_video(tmp_path / "sw" / name / "i0.gif").shape == (3, 32, 32, 3)
    again = batch.run_sweep(pipe, m, tmp_path / "sw", grid, defaults=TINY, batch_size=1, parallel="none",
                            fmt="gif", progress=False)
    assert all(r.calls == 0 and r.skipped == ["i0"] for r in again.values())


@pytest.mark.slow
def test_sweep_points_that_differ_in_schedule_values_share_batches(pipe, tmp_path):
    """Grid points differing only in guidance/resample values (same largest resample) run as
    items of one batch (one call of one program), each written to its own folder, each video
    the one that point gives alone (a batch of 4 vs alone: at most 1 uint8 level, the README's
    batching tolerance)."""
    m = _write_manifest(tmp_path, ids=["i0"])
    grid = manifest.parse_grid(json_spec='{"guidance": [5, 9], "resample": [1, [1, 0]]}')
    res = batch.run_sweep(pipe, m, tmp_path / "sw", grid, defaults=TINY, batch_size=4, parallel="none",
                          fmt="png", progress=False)
    assert sorted(res) == ["guidance=5_resample=1", "guidance=5_resample=1,0", "guidance=9_resample=1",
                           "guidance=9_resample=1,0"]
    assert all(r.done == ["i0"] and r.calls == 1 for r in res.values())
    img = tmp_path / "imgs" / "i0.png"
    for name, r in res.items():
        meta = json.loads((r.out_dir / "i0.json").read_text())
        s = meta["settings"]
        alone = pipe(img, "a thing number 0", seed=meta["seed"], **{**TINY, "guidance": s["guidance"],
                                                                   "resample": s["resample"]}).frames
        got = io.read_video(r.out_dir / "i0")
        assert np.abs(got.astype(int) - alone.astype(int)).max() <= 1, name


def test_cli_errors_before_loading(tmp_path, capsys):
    from ti2v_jax.cli import main
    m = _write_manifest(tmp_path, ids=["a"])
    args = ["--model", str(tmp_path / "nowhere"), "--manifest", str(m), "--out-dir", str(tmp_path / "o")]
    assert main(["sweep", *args, "--grid", "stpes=1,2"]) == 2
    assert "unknown setting 'stpes'" in capsys.readouterr().err
    assert main(["batch", *args]) == 2  # no such model


# ----------------------------------------------------------------------------- 4 devices


@pytest.mark.slow
def test_cli_mesh_on_4_devices(pipe, tiny_converted_dir, tmp_path):
    """The CLI over a 4-device mesh (batch 4: one full batch, one padded): 6 videos, 1 error,
    the same videos as single-device single-item pipeline calls."""
    m = _write_manifest(tmp_path)
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import jax, json
        from ti2v_jax.cli import main
        assert jax.device_count() == 4
        rc = main(["batch", "--model", {str(tiny_converted_dir)!r}, "--num-frames", "{K}",
                   "--manifest", {str(m)!r}, "--out-dir", {str(out)!r}, "--num-new-frames", "2",
                   "--steps", "2", "--resample", "1", "--batch-size", "4", "--format", "png",
                   "--no-progress"])
        print("RESULT", json.dumps(rc))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TI2V_PROCESS_INDEX", None), env.pop("TI2V_PROCESS_COUNT", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(proc.stdout[-2000:])
    assert json.loads(proc.stdout.split("RESULT ")[-1]) == 1  # exit status 1: an item failed
    good = [i for i in IDS if i != BROKEN]
    assert _complete(out) == good
    assert [json.loads(l)["id"] for l in (out / "errors.jsonl").read_text().splitlines()] == [BROKEN]
    metas = {i: json.loads((out / f"{i}.json").read_text()) for i in good}
    assert {d["devices"] for d in metas.values()} == {4}
    assert sorted(d["timing"]["batch_items"] for d in metas.values()) == [2, 2, 4, 4, 4, 4]
    assert {d["timing"]["batch_padded_to"] for d in metas.values()} == {4}
    worst = 0
    for i in good:
        ref = pipe(str(m.parent / "imgs" / f"{i}.png"), metas[i]["prompt"], seed=metas[i]["seed"],
                   num_new_frames=2, num_inference_steps=2, resample_iters=1).frames
        got = io.read_video(out / i)
        assert got.shape == ref.shape == (3, 32, 32, 3)
        worst = max(worst, int(np.abs(got.astype(int) - ref).max()))
    print("max uint8 difference, 4-device mesh batches vs single calls:", worst)
    assert worst <= 1  # float rounding across program shapes, at most one level


def test_a_job_whose_first_call_fails_stops_and_says_so(pipe, tmp_path):
    """A failure every item shares (here a bug in the call) stops the job at once instead of
    being reported for each of N items; the call's item is logged first."""
    class Broken:
        def __getattr__(self, name):
            return getattr(pipe, name)

        def __call__(self, *args, **kwargs):
            raise TypeError("a bug in the sampler")

    out = tmp_path / "out"
    with pytest.raises(TypeError, match="a bug"):
        _run(Broken(), _write_manifest(tmp_path), out)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["stage"]) for e in errors] == [("i0", "generate")]
    assert not (out / ".claims").exists() and _complete(out) == []


def test_summary_says_when_every_item_failed_the_same_way(tmp_path):
    def entry(i, stage, reason):
        return {"id": i, "line": 1, "stage": stage, "reason": reason}

    same = batch.BatchResult(out_dir=tmp_path, process=(0, 1), errors=[
        entry(f"i{n}", "image", f"InputError: imgs/i{n}.png: not a readable image") for n in range(3)])
    print(same.summary())
    assert "all 3 failed the same way (image: InputError: imgs/i0.png" in same.summary()
    mixed = batch.BatchResult(out_dir=tmp_path, process=(0, 1), errors=[
        entry("a", "image", "InputError: x"), entry("b", "save", "OSError: disk full")])
    assert "same way" not in mixed.summary()
    some_done = batch.BatchResult(out_dir=tmp_path, process=(0, 1), done=["c"], errors=same.errors)
    assert "same way" not in some_done.summary()
