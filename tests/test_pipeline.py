"""TI2VZeroPipeline end to end on the tiny random checkpoint (tests/conftest.py).

One module-scoped pipeline and one set of sampler settings, so the compiled program
is built once and shared by the tests below.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from ti2v_jax import io
from ti2v_jax.errors import SettingsError
from ti2v_jax.pipeline import TI2VZeroPipeline
from ti2v_jax.settings import SamplerSettings

FAST = dict(num_new_frames=2, num_inference_steps=2, resample_iters=1)


@pytest.fixture(scope="module")
def pipe(tiny_converted_dir):
    return TI2VZeroPipeline.from_pretrained(tiny_converted_dir, num_frames=4)  # K=4 keeps CI fast


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)
    return [(rng.rand(40, 56, 3) * 255).astype(np.uint8) for _ in range(2)]


def test_video_shape_first_frame_and_determinism(pipe, images):
    v1 = pipe(images[0], "a red ball", seed=3, **FAST)
    assert v1.shape == (3, 32, 32, 3) and v1.dtype == np.uint8
    # The given image comes first, exactly as loaded (rounding, not truncation).
    np.testing.assert_array_equal(v1[0], io.to_uint8(io.load_image(images[0], (32, 32))))
    v2 = pipe(images[0], "a red ball", seed=3, **FAST)
    np.testing.assert_array_equal(v1, v2)  # same seed, same video
    v3 = pipe(images[0], "a red ball", seed=4, **FAST)
    assert np.abs(v3[1:].astype(int) - v1[1:].astype(int)).max() > 0  # another seed, another video


def test_batch_equals_single_runs(pipe, images):
    batch = pipe(images, ["a red ball", "a blue cube"], seed=[5, 9], **FAST)
    assert batch.shape == (2, 3, 32, 32, 3)
    for img, prompt, seed, got in zip(images, ["a red ball", "a blue cube"], [5, 9], batch):
        single = pipe(img, prompt, seed=seed, **FAST)
        diff = np.abs(single.astype(int) - got.astype(int)).max()
        print(f"batch vs single max |diff| (uint8 levels): {diff}")
        assert diff <= 1


def test_video_prediction_and_latent_slide(pipe, images):
    v = pipe(images, "a red ball", given_frames_as_video=True, slide="latent", **FAST)
    assert v.shape == (4, 32, 32, 3)  # 2 given + 2 new


def test_text_to_video(pipe):
    v = pipe.text_to_video("a red ball", num_inference_steps=2)
    assert v.shape == (4, 32, 32, 3) and v.dtype == np.uint8


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_inference_steps=-1), "steps must be in"),  # aliases are reported by the setting's one name
    (dict(num_new_frames=0), "num_new_frames"),
    (dict(guidance_scale=-1.0), "guidance must be in"),
    (dict(guidance_scale=float("inf")), "guidance must be a finite number"),
    (dict(eta=1.5), "eta must be in"),
    (dict(slide="pixels"), "slide"),
    (dict(resample_iters=-2), "resample must be in"),
    (dict(resample_iters=(1, 2, 3)), "resample has 3 values but there are 2 steps"),
    (dict(height=31), "multiples"),
    (dict(stpes=3), "unknown setting 'stpes'"),
])
def test_bad_settings(pipe, images, kwargs, message):
    with pytest.raises(SettingsError, match=message):
        pipe(images[0], "x", **{**FAST, **kwargs})


def test_settings_object_and_aliases_agree(pipe, images):
    """A SamplerSettings, its field names and the diffusers-style aliases are one setting."""
    s = SamplerSettings(num_new_frames=2, steps=2, resample=1)
    np.testing.assert_array_equal(pipe(images[0], "x", s, seed=3), pipe(images[0], "x", seed=3, **FAST))
    with pytest.raises(SettingsError, match="given twice"):
        pipe(images[0], "x", steps=2, num_inference_steps=2)


def test_output_types(pipe, images):
    """uint8 on the host; float/jax in [0, 1] with the given image first; latent on the device."""
    u8 = pipe(images[0], "x", seed=1, **FAST)
    f = pipe(images[0], "x", seed=1, output_type="float", **FAST)
    j = pipe(images[0], "x", seed=1, output_type="jax", **FAST)
    lat = pipe(images[0], "x", seed=1, output_type="latent", **FAST)
    assert isinstance(f, np.ndarray) and isinstance(j, jax.Array) and isinstance(lat, jax.Array)
    assert f.shape == u8.shape and f.dtype == np.float32 and lat.shape == (2, 16, 16, 4)
    np.testing.assert_array_equal(np.asarray(j), f)
    assert np.abs(np.round(f * 255) - u8).max() <= 1
    with pytest.raises(SettingsError, match="output_type"):
        pipe(images[0], "x", output_type="png", **FAST)


def test_progress_callback_reports_every_frame(pipe, images):
    seen = []
    pipe(images[0], "x", progress=lambda done, total: seen.append((done, total)), **FAST)
    assert seen == [(1, 2), (2, 2)]


def test_mismatched_lists(pipe, images):
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        pipe(images, ["a", "b", "c"], **FAST)


def test_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TI2VZeroPipeline.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        TI2VZeroPipeline.from_pretrained(tmp_path / "empty")


def test_offline_repo_id_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="ti2v-jax convert"):
        TI2VZeroPipeline.from_pretrained("someone/some-model")


def test_diffusers_dir_converted_on_the_fly(tiny_diffusers_dir, tiny_converted_dir, images, caplog):
    with caplog.at_level(logging.INFO, logger="ti2v_jax"):
        a = TI2VZeroPipeline.from_pretrained(tiny_diffusers_dir, num_frames=4)
    assert "in memory" in caplog.text
    b = TI2VZeroPipeline.from_pretrained(tiny_converted_dir, num_frames=4)
    np.testing.assert_array_equal(a(images[0], "x", **FAST), b(images[0], "x", **FAST))


MULTI_DEVICE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    assert jax.device_count() == 4, jax.devices()
    from ti2v_jax.pipeline import TI2VZeroPipeline
    pipe = TI2VZeroPipeline.from_pretrained(sys.argv[1], num_frames=4)
    rng = np.random.RandomState(0)
    imgs = [(rng.rand(32, 32, 3) * 255).astype(np.uint8) for _ in range(4)]
    prompts = ["a red ball", "a blue cube", "", "a green cat"]
    kw = dict(num_new_frames=2, num_inference_steps=2, resample_iters=1)
    seeds = [11, 12, 13, 14]
    # The reference: each video alone on one device (the shapes each device runs below).
    ref = np.stack([pipe(i, p, seed=s, parallel="none", **kw) for i, p, s in zip(imgs, prompts, seeds)])
    batch = pipe(imgs, prompts, seed=seeds, parallel="none", **kw)
    out = {"one-device-batch-4": int(np.abs(batch.astype(int) - ref.astype(int)).max())}
    for mode in ("mesh", "pmap"):
        for n in (3, 4):
            got = pipe(imgs[:n], prompts[:n], seed=seeds[:n], parallel=mode, **kw)
            out[f"{mode}-{n}"] = int(np.abs(got.astype(int) - ref[:n].astype(int)).max())
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_mesh_and_pmap_equal_single_device(tiny_converted_dir):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", MULTI_DEVICE, str(tiny_converted_dir)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    diffs = json.loads(r.stdout.strip().splitlines()[-1])
    print("max |multi-device - single-device| in uint8 levels:", diffs)
    # 4 devices run one video each: the same program shapes as one video alone, so the same bits.
    assert {diffs[k] for k in ("mesh-3", "mesh-4", "pmap-3", "pmap-4")} == {0}
    # A batch of 4 on one device runs other matmul shapes; float rounding may move a level.
    assert diffs["one-device-batch-4"] <= 1
