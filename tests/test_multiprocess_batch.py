"""`ti2v-jax batch` as two jax.distributed processes against one process: every frame equal.

The real command (tiny converted checkpoint, 5 items, S=2, R=1, N=2, 16x16, PNG frames) runs
once as one process with 4 CPU devices and once as a Slurm-style launch of two processes with
2 CPU devices each (`--parallel mesh`, lockstep over the 4 devices), and every frame of every
item must be equal bit for bit.

XLA:CPU sizes its thread pool max(cores, the process's CPU devices), and its Eigen
convolutions sum in an order that follows that size (the VAE's 3-channel output conv moves
by ~1e-6, a pixel by tens of levels after a slide). On this 2-core host the one process
has a pool of 4 and each of the two a pool of 2 unless `distributed.match_cpu_threads`
gives them the one process's 4, which is what this test checks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["--steps", "2", "--resample", "1", "--num-new-frames", "2", "--height", "16", "--width", "16"]
_SLURM_PORT_BASE = 65535 - 2 ** 12 + 1  # jax's Slurm launcher: port = base + job id % 4096


def _free_slurm_port() -> int:
    for port in range(_SLURM_PORT_BASE + os.getpid() % 2000, 65536):
        with socket.socket() as s:
            try:
                s.bind(("localhost", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port for the coordinator")


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "JAX_COORDINATOR", "OMPI_")) and k not in ("PJRT_NPROC", "NPROC")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), TI2V_DEBUG="1", **extra)
    return env


def _batch(model, manifest, out, env):
    argv = [sys.executable, "-m", "ti2v_jax.cli", "batch", "--model", str(model), "--manifest", str(manifest),
            "--out-dir", str(out), "--format", "png", "--no-progress", "--parallel", "mesh", *SETTINGS]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs, timeout=900):
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        if p.returncode != 0 and "gloo" in err.lower() and "not" in err.lower():
            pytest.skip("jax built without CPU gloo collectives")
        assert p.returncode == 0, err[-4000:]
        results.append(out)
    return results


def _frames(out: Path) -> dict:
    return {d.name: [np.asarray(Image.open(f)) for f in sorted(d.glob("frame_*.png"))]
            for d in sorted(out.iterdir()) if d.is_dir()}


@pytest.mark.slow  # three processes, each compiling the sampler
def test_two_process_batch_equals_one_process(tiny_converted_dir, tmp_path):
    rng = np.random.RandomState(0)
    with open(tmp_path / "m.jsonl", "w") as f:
        for i in range(5):
            Image.fromarray(rng.randint(0, 255, (16, 16, 3), np.uint8)).save(tmp_path / f"img{i}.png")
            f.write(json.dumps({"id": f"it{i}", "image": f"img{i}.png", "prompt": f"a cat {i}"}) + "\n")
    manifest = tmp_path / "m.jsonl"

    port = _free_slurm_port()
    slurm = dict(SLURM_JOB_ID=str(port - _SLURM_PORT_BASE), SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                 JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    two = _finish([_batch(tiny_converted_dir, manifest, tmp_path / "two",
                          _env(2, **slurm, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)))
                    for i in (0, 1)])
    assert [s.strip().splitlines()[-1].split(": ")[1] for s in two] == ["3 generated, 0 already done, 0 failed",
                                                                      "2 generated, 0 already done, 0 failed"]
    _finish([_batch(tiny_converted_dir, manifest, tmp_path / "one", _env(4))])

    one, many = _frames(tmp_path / "one"), _frames(tmp_path / "two")
    assert sorted(one) == sorted(many) == [f"it{i}" for i in range(5)]
    worst = {}
    for item in one:
        assert len(one[item]) == len(many[item]) == 3  # the given frame and N=2 new ones
        worst[item] = [int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(one[item], many[item])]
    print("largest difference per frame (uint8 levels):", worst)
    assert all(d == 0 for frames in worst.values() for d in frames), worst
    meta = json.loads((tmp_path / "two" / "it1.json").read_text())
    assert meta["process"] == [1, 2] and meta["devices"] == 4
