"""Hardening (issue 26): resource bounds, and bad input / faults at the command line.

Every bad-input case asserts the spec: exit status 2 (1 for a batch job whose items
failed, 130 for Ctrl-C), ONE line on stderr (no traceback), and no output left behind.
The CLI runs in-process (`cli.main`) except where only a subprocess can do it (bytes
argv, SIGINT). The model is the shipped default one with tiny settings, so each case
fails before anything compiles where it should.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from ti2v_jax import resources
from ti2v_jax.errors import ResourceError
from ti2v_jax.pipeline import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-new-frames", "1", "--steps", "1", "--resample", "0"]
GiB = 1 << 30

# ----------------------------------------------------------------------------- resource bounds

MODELSCOPE_UNET = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "attention_head_dim": 64,
                       "in_channels": 4, "cross_attention_dim": 1024}
SD_VAE = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 4}


def _default_configs():
    d = DEFAULT_MODEL
    return (json.loads((d / "unet" / "config.json").read_text()), json.loads((d / "vae" / "config.json").read_text()),
            json.loads((d / "model_index.json").read_text()))


@pytest.mark.parametrize("blocked", [True, False])
def test_estimate_passes_real_sizes_on_a_24_gib_host(blocked):
    unet, vae, index = _default_configs()
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    size = unet["sample_size"] * scale
    tiny = resources.estimate_bytes(unet, vae, batch=1, num_frames=index["num_frames"], height=size, width=size,
                                    num_new_frames=index["num_new_frames"], dtype="float32", blocked_attention=blocked)
    big = resources.estimate_bytes(MODELSCOPE_UNET, SD_VAE, batch=1, num_frames=16, height=256, width=256,
                                   num_new_frames=15, dtype="float32", blocked_attention=blocked)
    print(f"blocked={blocked}: shipped model {tiny['total'] / 2**20:.1f} MiB, "
          f"1.7B at 256x256 {big['total'] / GiB:.2f} GiB: {({k: round(v / 2**20) for k, v in big.items()})}")
    for est in (tiny, big):
        assert set(est) == {"latents", "queues", "unet_activations", "attention_scores", "vae_activations",
                            "output_video", "total"}
        assert est["total"] == sum(v for k, v in est.items() if k != "total")
        resources.check_fits(est, available=24 * GiB)  # no error
    # Not absurdly small either: the 1.7B pass at 256x256 holds > 100 MiB of activations.
    assert 100 << 20 < big["unet_activations"] and big["total"] < 8 * GiB
    # Monotone in every size.
    for kw in ("batch", "height", "width", "num_new_frames", "num_frames"):
        base = {"batch": 1, "num_frames": 16, "height": 256, "width": 256, "num_new_frames": 15}
        more = dict(base, **{kw: base[kw] * 2})
        assert (resources.estimate_bytes(MODELSCOPE_UNET, SD_VAE, **more, blocked_attention=blocked)["total"]
                > big["total"]), kw


@pytest.mark.parametrize("kw,part", [
    ({"height": 100_000, "width": 100_000}, None),
    ({"num_new_frames": 10 ** 9}, "output video"),
    ({"batch": 10 ** 6}, None),
])
def test_absurd_sizes_refused_at_once(kw, part):
    unet, vae, _ = _default_configs()
    args = {"batch": 1, "num_frames": 8, "height": 32, "width": 32, "num_new_frames": 7, "dtype": "float32", **kw}
    tracemalloc.start()
    try:
        est = resources.estimate_bytes(unet, vae, **args)
        with pytest.raises(ResourceError) as e:
            resources.check_fits(est)  # the real host's available memory
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # pure arithmetic on the shapes: nothing of that size allocated
    msg = str(e.value)
    print(msg)
    assert "\n" not in msg and "available" in msg and "reduce" in msg
    if part:
        assert part in msg and "--num-new-frames" in msg
    assert isinstance(e.value, MemoryError)


def test_check_fits_uses_the_device_and_can_be_skipped(monkeypatch):
    est = {"latents": 10, "total": 10}
    resources.check_fits(est)  # the host has more than 10 bytes
    free, where = resources.available_bytes()
    assert free is not None and free > 0 and "host" in where
    assert free == resources.host_available_bytes()
    with pytest.raises(ResourceError, match="needs about .* but the device has 1.0 MiB available"):
        resources.check_fits({"queues": 5 << 20, "total": 5 << 20}, available=1 << 20)

    class Accel:  # an accelerator that reports its memory
        platform, id = "gpu", 0

        def memory_stats(self):
            return {"bytes_limit": 8 * GiB, "bytes_in_use": 7 * GiB}

    free, where = resources.available_bytes(Accel())
    assert free == GiB and where == "gpu device 0"
    with pytest.raises(ResourceError, match="gpu device 0 has 1.0 GiB available"):
        resources.check_fits({"unet_activations": 2 * GiB, "total": 2 * GiB}, Accel())

    class Silent(Accel):
        def memory_stats(self):
            return None

    resources.check_fits({"unet_activations": 2 * GiB, "total": 2 * GiB}, Silent())  # unknown: no check
    monkeypatch.setenv("TI2V_SKIP_RESOURCE_CHECK", "1")
    resources.check_fits({"unet_activations": 2 * GiB, "total": 2 * GiB}, Accel())


def test_estimate_rejects_bad_shapes():
    unet, vae, _ = _default_configs()
    with pytest.raises(TypeError):
        resources.estimate_bytes(unet, vae, batch=1.5, num_frames=8, height=32, width=32, num_new_frames=1)
    with pytest.raises(ValueError):
        resources.estimate_bytes(unet, vae, batch=1, num_frames=8, height=-32, width=32, num_new_frames=1)
