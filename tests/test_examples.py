"""Every examples/*.py runs, as a user would start it, with tiny settings.

Each runs in its own process on the shipped default model, with its own flags shrunk to
one or two DDIM steps and new frames, writing into a scratch folder; the test checks the
exit code and that the files it announces were written. Each compiles the sampler in a fresh
process (a minute or more on the 2-core host): slow tier.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))

# example -> (tiny flags, the files it must write); "{out}" is the scratch folder.
TINY = {
    "image_to_video.py": (["--frames", "1", "--steps", "1", "--resample", "0", "--out", "{out}/v.gif"], ["v.gif"]),
    "long_video.py": (["--frames", "2", "--steps", "1", "--resample", "0", "--slide", "latent",
                       "--out", "{out}/v.gif"], ["v.gif"]),
    "video_prediction.py": (["--given", "2", "--new", "1", "--steps", "1", "--out", "{out}/v.gif"], ["v.gif"]),
    "many_devices.py": (["--batch", "1", "--frames", "1", "--steps", "1", "--out-prefix", "{out}/md"],
                        ["md_0_0.gif"]),
    "optimize_noise.py": (["--frames", "1", "--steps", "1", "--resample", "0", "--iters", "1", "--out", "{out}"],
                          ["optimize_before.gif", "optimize_after.gif"]),
    "schedule_grid.py": (["--steps", "1", "--frames", "1", "--guidance", "3", "--resample", "1",
                          "--out", "{out}/sheet.png"], ["sheet.png"]),
    "evaluate_sampler.py": (["--cases", "1", "--frames", "3", "--a", "steps=1,resample=0",
                             "--b", "steps=1,resample=1"], []),
}


def test_every_example_has_tiny_settings():
    assert sorted(TINY) == EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, tmp_path):
    flags, outputs = TINY[name]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name), *(f.format(out=tmp_path) for f in flags)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{name} exited {r.returncode}:\n{r.stderr[-3000:]}"
    for out in outputs:
        assert (tmp_path / out).is_file(), f"{name} did not write {out}: {r.stdout[-1000:]}"
    print(f"{name}: {r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''}")
