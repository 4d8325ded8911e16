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
import jax.numpy as jnp
import numpy as np
import pytest

from ti2v_jax import io
from ti2v_jax.errors import SettingsError
from ti2v_jax.pipeline import TI2VZeroPipeline, TI2VZeroPipelineOutput, hub_files
from ti2v_jax.settings import SamplerSettings

FAST = dict(num_new_frames=2, num_inference_steps=2, resample_iters=1)


@pytest.fixture(scope="module")
def pipe(tiny_converted_dir):
    return TI2VZeroPipeline.from_pretrained(tiny_converted_dir, num_frames=4)  # K=4 keeps CI fast


@pytest.fixture(scope="module")
def images():
    rng = np.random.RandomState(0)
    return [(rng.rand(40, 56, 3) * 255).astype(np.uint8) for _ in range(2)]


@pytest.mark.slow
def test_video_shape_first_frame_and_determinism(pipe, images):
    v1 = pipe(images[0], "a red ball", seed=3, **FAST).frames
    assert v1.shape == (3, 32, 32, 3) and v1.dtype == np.uint8
    # The given image comes first, exactly as loaded (rounding, not truncation).
    np.testing.assert_array_equal(v1[0], io.to_uint8(io.load_image(images[0], (32, 32))))
    v2 = pipe(images[0], "a red ball", seed=3, **FAST).frames
    np.testing.assert_array_equal(v1, v2)  # same seed, same video
    # One rule: seed s is the key jax.random.key(s) (typed or raw), used as is for one video.
    for key in (jax.random.key(3), jax.random.PRNGKey(3), jax.random.key(3)[None]):
        np.testing.assert_array_equal(pipe(images[0], "a red ball", key=key, **FAST).frames, v1)
    v3 = pipe(images[0], "a red ball", seed=4, **FAST).frames
    assert np.abs(v3[1:].astype(int) - v1[1:].astype(int)).max() > 0  # another seed, another video


@pytest.mark.slow
def test_batch_equals_single_runs(pipe, images):
    batch = pipe(images, ["a red ball", "a blue cube"], seed=[5, 9], **FAST).frames
    assert batch.shape == (2, 3, 32, 32, 3)
    # The same videos from their keys (one per video), and item 0 of `seed=5` (items 5, 6) is seed 5's.
    keys = jnp.stack([jax.random.key(5), jax.random.key(9)])
    np.testing.assert_array_equal(pipe(images, ["a red ball", "a blue cube"], key=keys, **FAST).frames, batch)
    np.testing.assert_array_equal(pipe(images, ["a red ball", "x"], seed=5, **FAST).frames[0], batch[0])
    for img, prompt, seed, got in zip(images, ["a red ball", "a blue cube"], [5, 9], batch):
        single = pipe(img, prompt, seed=seed, **FAST).frames
        diff = np.abs(single.astype(int) - got.astype(int)).max()
        print(f"batch vs single max |diff| (uint8 levels): {diff}")
        assert diff <= 1


@pytest.mark.slow
def test_video_prediction_and_latent_slide(pipe, images):
    v = pipe(images, "a red ball", given_frames_as_video=True, slide="latent", **FAST).frames
    assert v.shape == (4, 32, 32, 3)  # 2 given + 2 new


@pytest.mark.slow
def test_text_to_video(pipe):
    v = pipe.text_to_video("a red ball", num_inference_steps=2).frames
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


@pytest.mark.slow
def test_settings_object_and_aliases_agree(pipe, images):
    """A SamplerSettings, its field names and the diffusers-style aliases are one setting."""
    s = SamplerSettings(num_new_frames=2, steps=2, resample=1)
    np.testing.assert_array_equal(pipe(images[0], "x", s, seed=3).frames, pipe(images[0], "x", seed=3, **FAST).frames)
    with pytest.raises(SettingsError, match="given twice"):
        pipe(images[0], "x", steps=2, num_inference_steps=2)


def test_output_types(pipe, images):
    """uint8/np/pil on the host, jax/latent on the device; the given image first; diffusers' output object."""
    out = pipe(images[0], "x", seed=1, **FAST)
    assert isinstance(out, TI2VZeroPipelineOutput)
    u8 = out.frames
    f = pipe(images[0], "x", seed=1, output_type="np", **FAST).frames
    pil = pipe(images[0], "x", seed=1, output_type="pil", **FAST).frames
    j = pipe(images[0], "x", seed=1, output_type="jax", **FAST).frames
    (lat,) = pipe(images[0], "x", seed=1, output_type="latent", return_dict=False, **FAST)
    assert isinstance(f, np.ndarray) and isinstance(j, jax.Array) and isinstance(lat, jax.Array)
    assert f.shape == u8.shape and f.dtype == np.float32 and lat.shape == (2, 16, 16, 4)
    assert [im.size for im in pil] == [(32, 32)] * 3
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil]), u8)
    np.testing.assert_array_equal(np.asarray(j), f)
    assert np.abs(np.round(f * 255) - u8).max() <= 1
    with pytest.raises(SettingsError, match="output_type"):
        pipe(images[0], "x", output_type="png", **FAST)


@pytest.mark.slow
def test_batch_axis_rule(pipe, images):
    """A list of images or of prompts adds a leading axis (a list level for "pil"), whatever its length."""
    assert pipe([images[0]], "x", **FAST).frames.shape == (1, 3, 32, 32, 3)
    assert pipe(images[0], ["x"], **FAST).frames.shape == (1, 3, 32, 32, 3)
    assert pipe(images[0], ["x", "y"], **FAST).frames.shape == (2, 3, 32, 32, 3)  # one image, two prompts
    pil = pipe([images[0]], "x", output_type="pil", **FAST).frames
    assert len(pil) == 1 and len(pil[0]) == 3
    assert pipe.text_to_video(["x"], num_inference_steps=2).frames.shape == (1, 4, 32, 32, 3)


def _count_compiles():
    """A list that grows by one per XLA backend compilation while the listener is registered."""
    events = []

    def listener(name, *_args, **_kw):
        if name == "/jax/core/compile/backend_compile_duration":
            events.append(name)
    jax.monitoring.register_event_duration_secs_listener(listener)
    return events, lambda: jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.slow
def test_what_recompiles(pipe, images):
    """The README's claim, exactly: per-step values are arguments, except three static facts
    (any guidance != 1, any eta != 0, the largest resample) which select the program."""
    base = dict(num_new_frames=2, num_inference_steps=2)
    pipe(images[0], "x", guidance=9.0, eta=0.0, resample=1, **base)  # warm: this program is built
    events, stop = _count_compiles()
    try:
        def compiles(**kw):
            before = len(events)
            pipe(images[0], "x", **{**base, **kw})
            return len(events) - before
        same = {"guidance 9 -> 5": compiles(guidance=5.0, eta=0.0, resample=1),
                "guidance per step": compiles(guidance=(7.0, 3.0), eta=0.0, resample=1),
                "resample 1 -> (1, 0)": compiles(guidance=9.0, eta=0.0, resample=(1, 0))}
        new = {"guidance 9 -> 1": compiles(guidance=1.0, eta=0.0, resample=1),
               "eta 0 -> 0.3": compiles(guidance=9.0, eta=0.3, resample=1),
               "resample 1 -> 2": compiles(guidance=9.0, eta=0.0, resample=2)}
        again = {"eta 0.3 -> 0.5": compiles(guidance=9.0, eta=0.5, resample=1)}
    finally:
        stop()
    print(f"backend compiles per call: {same} {new} {again}")
    assert set(same.values()) == {0} and set(again.values()) == {0}
    assert all(n >= 1 for n in new.values())


@pytest.mark.slow
def test_params_swap_without_recompiling(pipe, images):
    """params= runs other weights of the same shapes through the same compiled program."""
    ref = pipe(images[0], "x", seed=2, **FAST).frames
    scaled = jax.tree.map(lambda a: a * 1.01, pipe.params)
    events, stop = _count_compiles()
    try:
        same = pipe(images[0], "x", seed=2, params=pipe.params, **FAST).frames
        other = pipe(images[0], "x", seed=2, params=scaled, **FAST).frames
    finally:
        stop()
    np.testing.assert_array_equal(same, ref)
    assert np.abs(other[1:].astype(int) - ref[1:].astype(int)).max() > 0
    assert np.abs(pipe(images[0], "x", seed=2, **FAST).frames.astype(int) - ref).max() == 0  # not kept
    print(f"backend compiles for two calls with params=: {len(events)}")
    assert events == []
    wrong = jax.tree.map(lambda a: a.astype(np.float16), pipe.params)
    with pytest.raises(ValueError, match="params= differs from the pipeline's params at"):
        pipe(images[0], "x", params=wrong, **FAST)


def test_device_outputs_do_not_wait(pipe, images, monkeypatch):
    """"jax" and "latent" come back without blocking on the device (asynchronous dispatch)."""
    blocked = []
    real = jax.block_until_ready
    monkeypatch.setattr(jax, "block_until_ready", lambda x: blocked.append(1) or real(x))
    out = pipe(images[0], "x", output_type="jax", **FAST).frames
    assert isinstance(out, jax.Array) and blocked == []
    pipe(images[0], "x", output_type="latent", progress=lambda *_: None, **FAST)
    assert blocked == [1]  # progress reports belong to the call: it waits for them


def test_progress_callback_reports_every_frame(pipe, images):
    seen = []
    pipe(images[0], "x", progress=lambda done, total: seen.append((done, total)), **FAST)
    assert seen == [(1, 2), (2, 2)]


def test_mismatched_lists(pipe, images):
    with pytest.raises(SettingsError, match=r"one key per video, e\.g\. jax\.random\.split\(key, 2\)"):
        pipe(images, "x", key=jax.random.key(0), **FAST)  # one key is one video's
    with pytest.raises(SettingsError, match="got 3 per-item keys for a batch of 2"):
        pipe(images, "x", key=jax.random.split(jax.random.key(0), 3), **FAST)
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        pipe(images, ["a", "b", "c"], **FAST)


def test_bad_model_paths(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TI2VZeroPipeline.from_pretrained(tmp_path / "missing")
    # A mistyped relative path looks like a hub id: the error says first that no such folder is here.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="^no such folder 'ckpts/ms17b'"):
        TI2VZeroPipeline.from_pretrained("ckpts/ms17b")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        TI2VZeroPipeline.from_pretrained(tmp_path / "empty")


def test_offline_repo_id_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="ti2v-jax convert"):
        TI2VZeroPipeline.from_pretrained("someone/some-model")


@pytest.mark.slow
def test_diffusers_dir_converted_on_the_fly(tiny_diffusers_dir, tiny_converted_dir, images, caplog):
    with caplog.at_level(logging.INFO, logger="ti2v_jax"):
        a = TI2VZeroPipeline.from_pretrained(tiny_diffusers_dir, num_frames=4)
    assert "in memory" in caplog.text
    b = TI2VZeroPipeline.from_pretrained(tiny_converted_dir, num_frames=4)
    np.testing.assert_array_equal(a(images[0], "x", **FAST).frames, b(images[0], "x", **FAST).frames)


MULTI_DEVICE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    assert jax.device_count() == 4, jax.devices()
    from ti2v_jax.pipeline import TI2VZeroPipeline, TI2VZeroPipelineOutput, hub_files
    pipe = TI2VZeroPipeline.from_pretrained(sys.argv[1], num_frames=4)
    rng = np.random.RandomState(0)
    imgs = [(rng.rand(32, 32, 3) * 255).astype(np.uint8) for _ in range(4)]
    prompts = ["a red ball", "a blue cube", "", "a green cat"]
    kw = dict(num_new_frames=2, num_inference_steps=2, resample_iters=1)
    seeds = [11, 12, 13, 14]
    # The reference: each video alone on one device (the shapes each device runs below).
    ref = np.stack([pipe(i, p, seed=s, parallel="none", **kw).frames for i, p, s in zip(imgs, prompts, seeds)])
    batch = pipe(imgs, prompts, seed=seeds, parallel="none", **kw).frames
    out = {"one-device-batch-4": int(np.abs(batch.astype(int) - ref.astype(int)).max())}
    for mode in ("mesh", "pmap"):
        for n in (3, 4):
            got = pipe(imgs[:n], prompts[:n], seed=seeds[:n], parallel=mode, **kw).frames
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


def test_hub_downloads_only_what_a_checkpoint_needs(monkeypatch, tmp_path):
    """A hub id fetches the configs, tokenizer and one copy of each component's weights."""
    import huggingface_hub

    repo = ["README.md", "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
            "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "text_encoder/pytorch_model.bin",
            "tokenizer/merges.txt", "tokenizer/vocab.json", "unet/config.json",
            "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin", "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "vae/diffusion_flax_model.msgpack", "samples/demo.mp4"]
    assert hub_files(repo) == [
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "tokenizer/merges.txt", "tokenizer/vocab.json", "unet/config.json",
        "unet/diffusion_pytorch_model.bin", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    release = ["configuration.json", "text2video_pytorch_model.pth", "VQGAN_autoencoder.pth",
               "open_clip_pytorch_model.bin", "samples/demo.gif"]
    assert hub_files(release) == ["VQGAN_autoencoder.pth", "configuration.json", "open_clip_pytorch_model.bin",
                                  "text2video_pytorch_model.pth"]
    calls = {}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id: repo)
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.update(kw, repo_id=repo_id) or str(tmp_path))
    from ti2v_jax.pipeline import resolve_model

    assert resolve_model("someone/t2v") == tmp_path
    assert calls["repo_id"] == "someone/t2v" and calls["allow_patterns"] == hub_files(repo)
