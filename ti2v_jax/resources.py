"""Memory bounds checked before any work starts.

    est = estimate_bytes(unet_cfg, vae_cfg, batch=1, num_frames=16, height=256, width=256,
                         num_new_frames=15, dtype="float32")
    check_fits(est)            # raises ResourceError when the device cannot hold it

`estimate_bytes` derives, from the shapes of one call alone (no tracing, no allocation),
an upper estimate of the memory the call needs beyond the loaded weights: the sampler's
latents, the activations of one U-Net pass (the guidance pair: 2 x batch x K frames),
the VAE's working set on one frame, the latent and pixel queues, and the output video
on the host. It is deliberately conservative (every skip connection of the U-Net held
at once, generous factors for the widest layer's intermediates, full attention scores
of one layer) but of the right order, so that absurd sizes are refused at once with a
clear message rather than after minutes of work or deep inside XLA.

`check_fits` compares the total with what the device has free: on a CPU the host's
available memory (/proc/meminfo MemAvailable, else sysconf), on an accelerator
`memory_stats()["bytes_limit"] - ["bytes_in_use"]` when the backend reports them (no
check otherwise). `TI2V_SKIP_RESOURCE_CHECK=1` skips it (for people who know better).
"""

from __future__ import annotations

import os

from ti2v_jax import env
from ti2v_jax.errors import ResourceError, SettingsError

GiB = 1 << 30
# What to reduce, by the part of the estimate that dominates it.
_ADVICE = {
    "unet_activations": "reduce --height/--width or the batch size",
    "attention_scores": "reduce --height/--width or the batch size",
    "vae_activations": "reduce --height/--width or the batch size",
    "latents": "reduce --height/--width, the batch size or --num-frames",
    "queues": "reduce --height/--width, the batch size or --num-frames",
    "output_video": "reduce --num-new-frames, --height/--width or the batch size",
}


def _itemsize(dtype) -> int:
    import numpy as np

    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        import jax.numpy as jnp

        return int(jnp.dtype(dtype).itemsize)


def _as_int(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) and not (hasattr(v, "__index__")):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if v < 0:
        raise SettingsError(f"{name} must be >= 0, got {v}")
    return v


def estimate_bytes(unet_config: dict, vae_config: dict, *, batch: int, num_frames: int, height: int,
                   width: int, num_new_frames: int, dtype="float32", blocked_attention: bool | None = None) -> dict:
    """An upper estimate, in bytes, of what one pipeline call needs beyond the weights.

    batch: items on one device per call (the output part counts them all the same).
    num_frames: K, frames the video model denoises at once. height/width: pixels.
    num_new_frames: N. dtype: the activations' dtype (scores and outputs are float32).
    blocked_attention: whether attention never holds one layer's scores whole (the
    "blocked" formulation, CPU's automatic one, or a flash kernel); default: True on a CPU
    backend. Otherwise the scores of one whole layer are counted (XLA's attention).
    Returns {part: bytes} with parts "latents", "queues", "unet_activations",
    "attention_scores", "vae_activations", "output_video" and their sum "total".
    Pure integer arithmetic on the shapes: instant for any size.
    """
    b, k = _as_int("batch", batch), _as_int("num_frames", num_frames)
    h, w, n = _as_int("height", height), _as_int("width", width), _as_int("num_new_frames", num_new_frames)
    item = _itemsize(dtype)
    f32 = 4
    vae_ch = list(vae_config.get("block_out_channels", (128, 256, 512, 512)))
    scale = 2 ** (len(vae_ch) - 1)
    lat_c = int(vae_config.get("latent_channels", unet_config.get("in_channels", 4)))
    hl, wl = -(-h // scale), -(-w // scale)
    lat = b * hl * wl * lat_c  # one latent frame per item

    # The sampler's state: x_t, the noise draws of a step, eps of the pair, x_0 (K frames each).
    latents = 8 * k * lat * f32
    # The latent queue (K-1) and the pixel queue (K-1 float frames) of repeat-and-slide.
    queues = (k - 1) * lat * f32 + (k - 1) * b * h * w * 3 * f32

    # One U-Net pass: the guidance pair, K frames each.
    u_ch = list(unet_config.get("block_out_channels", (320, 640, 1280, 1280)))
    layers = int(unet_config.get("layers_per_block", 2))
    head_dim = int(unet_config.get("attention_head_dim", 64)) or 64
    ctx_len = 77
    if blocked_attention is None:
        import jax

        blocked_attention = jax.default_backend() == "cpu"
    block = 4 << 20  # layers._CPU_BLOCK_BYTES: one block of sequences' scores at a time
    seqs = 2 * b * k
    skips, working, scores = 0, 0, 0
    for i, c in enumerate(u_ch):
        th, tw = -(-hl // 2 ** i), -(-wl // 2 ** i)
        tokens = th * tw
        act = seqs * tokens * c * item
        skips += (layers + 1) * act  # each resnet's output and the downsampler's, kept for the up path
        # The widest intermediates of a layer at this level: the up path's concatenated input
        # (2c), GEGLU's projection (8c) and its hidden (4c), q/k/v, norms and residuals.
        working = max(working, 24 * act)
        heads = max(1, c // head_dim)
        per_seq = heads * tokens * max(tokens, ctx_len) * f32
        spatial = max(block, per_seq) if blocked_attention else seqs * per_seq
        temporal = max(block, heads * k * k * f32) if blocked_attention else 2 * b * tokens * heads * k * k * f32
        scores = max(scores, spatial, temporal)
    unet = skips + working

    # The VAE on one frame of each item (encode and decode run frame by frame): its widest
    # full-resolution activations and the mid-block's single-head attention.
    vae = 12 * b * h * w * max(vae_ch[0], 3) * item + b * (hl * wl) ** 2 * f32

    # The output: the program's float32 frames (device and host copy), then uint8 twice
    # (conversion and concatenation with the given frame).
    output = b * n * h * w * 3 * (2 * f32 + 2) + b * n * lat * f32 + b * h * w * 3 * (f32 + 2)

    parts = {"latents": latents, "queues": queues, "unet_activations": unet, "attention_scores": scores,
             "vae_activations": vae, "output_video": output}
    parts["total"] = sum(parts.values())
    return parts


def available_bytes(device=None) -> tuple[int | None, str]:
    """(free bytes, description) of `device` (default: jax's first device); None when unknown."""
    import jax

    device = device if device is not None else jax.devices()[0]
    platform = getattr(device, "platform", "cpu")
    if platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 - not every backend reports memory
            stats = {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{platform} device {device.id}"
        return None, f"{platform} device {device.id}"
    return host_available_bytes(), "host (CPU)"


def host_available_bytes() -> int | None:
    """The host's available memory: MemAvailable from /proc/meminfo, else sysconf; None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _fmt(n: int) -> str:
    if n >= 1 << 50:
        return f"{n / (1 << 50):.3g} PiB"
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


def check_fits(estimate: dict, device=None, *, available: int | None = None) -> None:
    """Raise `ResourceError` (one line: estimate, what is free, what to reduce) when
    `estimate["total"]` exceeds the free memory of `device` (see `available_bytes`).

    available: the free bytes, instead of asking the device (tests). Skipped when the
    device does not report its memory, or with TI2V_SKIP_RESOURCE_CHECK=1.
    """
    if env.flag(env.SKIP_RESOURCE_CHECK):
        return
    where = "the device"
    if available is None:
        available, where = available_bytes(device)
        if available is None:
            return
    total = int(estimate["total"])
    if total <= available:
        return
    parts = {k: v for k, v in estimate.items() if k != "total"}
    big = max(parts, key=parts.get)
    raise ResourceError(
        f"this call needs about {_fmt(total)} of memory (largest part: {big.replace('_', ' ')} "
        f"{_fmt(parts[big])}) but {where} has {_fmt(max(0, available))} available; "
        f"{_ADVICE.get(big, 'reduce the sizes')} (TI2V_SKIP_RESOURCE_CHECK=1 skips this check)")


def estimate_for(pipe, *, batch: int, height: int, width: int, num_new_frames: int) -> dict:
    """`estimate_bytes` for a `TI2VZeroPipeline`'s configs, frame count and dtype."""
    cfg = pipe.components.configs
    return estimate_bytes(cfg["unet"], cfg["vae"], batch=batch, num_frames=pipe.num_frames, height=height,
                          width=width, num_new_frames=num_new_frames, dtype=pipe.dtype)


__all__ = ["available_bytes", "check_fits", "estimate_bytes", "estimate_for", "host_available_bytes"]
