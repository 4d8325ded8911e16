"""The `ti2v-jax` command line, end to end on the tiny random checkpoint.

diffusers layout -> `convert` -> `generate` to .mp4, .gif and PNGs -> the files
decode with 1 + N frames of the right size; `t2v`; `info`; bad input. Commands run
in-process through `cli.main` (the same code the console script runs); equal
pipelines share compiled programs, so the generate calls compile once.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ti2v_jax import cli, io

FAST = ["--num-new-frames", "2", "--steps", "2", "--resample", "1", "--num-frames", "4"]


@pytest.fixture(scope="module")
def converted(tiny_diffusers_layout_dir, tmp_path_factory):
    # The diffusers layout written by diffusers where torch is installed, else by numpy
    # (conftest): the CLI's tests need no PyTorch.
    dst = tmp_path_factory.mktemp("cli") / "converted"
    assert cli.main(["convert", str(tiny_diffusers_layout_dir), str(dst)]) == 0
    assert (dst / "model_index.json").is_file()
    return dst


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "start.png"
    rng = np.random.RandomState(1)
    Image.fromarray((rng.rand(48, 64, 3) * 255).astype(np.uint8)).save(path)
    return path


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "ti2v_jax.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for command in ("generate", "t2v", "convert", "info", "make-tiny", "batch"):
        assert command in r.stdout
    r = subprocess.run([sys.executable, "-m", "ti2v_jax.cli", "generate", "--help"], capture_output=True, text=True)
    for option in ("--num-new-frames", "--steps", "--resample", "--guidance", "--eta", "--no-inversion",
                   "--slide", "--seed", "--dtype", "--parallel", "--fps", "--model", "--image", "--prompt", "--out"):
        assert option in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["video.mp4", "video.gif", "frames"])
def test_generate_formats(converted, image, tmp_path, name, capsys):
    out = tmp_path / name
    assert cli.main(["generate", "--model", str(converted), "--image", str(image), "--prompt", "a red ball",
                     "--out", str(out), *FAST]) == 0
    video = io.read_video(out)
    assert video.shape == (3, 32, 32, 3)
    if name == "frames":  # PNG is lossless: the start image comes back exactly (GIF palettes, mp4 is lossy)
        np.testing.assert_array_equal(video[0], io.to_uint8(io.load_image(image, (32, 32))))
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.slow
def test_generate_is_deterministic_and_the_pipelines_video(converted, image, tmp_path):
    import jax

    from ti2v_jax.pipeline import TI2VZeroPipeline

    assert cli.main(["generate", "--model", str(converted), "--image", str(image), "--prompt", "a red ball",
                     "--out", str(tmp_path / "a"), "--seed", "7", *FAST]) == 0
    video = io.read_video(tmp_path / "a")  # PNGs: lossless
    # `--seed 7` is the pipeline's seed=7, i.e. its key=jax.random.key(7) (one seeding rule), every time.
    pipe = TI2VZeroPipeline.from_pretrained(converted, num_frames=4)
    for kw in (dict(seed=7), dict(key=jax.random.key(7))):
        got = pipe(str(image), "a red ball", num_new_frames=2, steps=2, resample=1, **kw).frames
        np.testing.assert_array_equal(video, got)


@pytest.mark.slow
def test_t2v(converted, tmp_path):
    out = tmp_path / "t2v.gif"
    assert cli.main(["t2v", "--model", str(converted), "--prompt", "a red ball", "--out", str(out),
                     "--steps", "2", "--num-frames", "4"]) == 0
    assert io.read_video(out).shape[1:] == (32, 32, 3)


@pytest.mark.slow
def test_info_reports_counts(converted, capsys):
    from ti2v_jax.loading import load

    assert cli.main(["info", str(converted), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    comps = load(converted)
    import jax
    for name in ("unet", "vae", "text_encoder"):
        expected = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(comps.params[name]))
        assert info["components"][name]["num_params"] == expected
        assert info["components"][name]["dtype"] == "float32"
    assert info["total_params"] == sum(c["num_params"] for c in info["components"].values())
    assert cli.main(["info", str(converted)]) == 0
    assert "UNet3DConditionModel  params=" in capsys.readouterr().out


def _fails(argv, capsys, message):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err


@pytest.mark.slow
def test_bad_input(converted, image, tmp_path, capsys):
    base = ["generate", "--model", str(converted), "--image", str(image), "--prompt", "x"]
    _fails(["generate", "--model", str(tmp_path / "nope"), "--image", str(image), "--prompt", "x",
            "--out", str(tmp_path / "o.gif")], capsys, "does not exist")
    (tmp_path / "notckpt").mkdir()
    _fails(["generate", "--model", str(tmp_path / "notckpt"), "--image", str(image), "--prompt", "x",
            "--out", str(tmp_path / "o.gif")], capsys, "not a checkpoint directory")
    _fails(base + ["--out", str(tmp_path / "missing" / "o.gif")], capsys, "missing")
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(image.read_bytes()[:200])
    _fails(["generate", "--model", str(converted), "--image", str(truncated), "--prompt", "x",
            "--out", str(tmp_path / "o.gif"), *FAST], capsys, "not a readable image")
    _fails(["generate", "--model", str(converted), "--image", str(tmp_path / "none.png"), "--prompt", "x",
            "--out", str(tmp_path / "o.gif"), *FAST], capsys, "none.png")
    _fails(base + ["--out", str(tmp_path / "o.avi")], capsys, ".avi")
    assert not (tmp_path / "o.gif").exists() and not (tmp_path / "o.avi").exists()
    # argparse rejects impossible numbers and misspelled choices before anything runs (exit 2)
    for bad in (["--steps", "-1"], ["--num-new-frames", "0"], ["--guidance", "-1"], ["--slide", "pixels"]):
        with pytest.raises(SystemExit) as e:
            cli.main(base + ["--out", str(tmp_path / "o.gif")] + bad)
        assert e.value.code == 2
        assert bad[0] in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notckpt", "trunc.png"]  # nothing half-written


def test_convert_refuses_existing_destination(tiny_diffusers_layout_dir, converted, capsys):
    _fails(["convert", str(tiny_diffusers_layout_dir), str(converted)], capsys, "exists")


@pytest.mark.slow
def test_make_tiny_then_generate(tmp_path, image):
    assert cli.main(["make-tiny", str(tmp_path / "tiny")]) == 0
    assert cli.main(["convert", str(tmp_path / "tiny"), str(tmp_path / "conv")]) == 0
    assert cli.main(["generate", "--model", str(tmp_path / "conv"), "--image", str(image), "--prompt", "hi",
                     "--out", str(tmp_path / "v.gif"), *FAST]) == 0
    assert io.read_video(tmp_path / "v.gif").shape == (3, 32, 32, 3)
