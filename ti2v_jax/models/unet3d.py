"""diffusers' `UNet3DConditionModel` (ModelScope text-to-video) in Flax NNX, channels-last.

    sample (B, F, h, w, C), timesteps (B,) or scalar, encoder_hidden_states (B, T, D)
        -> noise prediction (B, F, h, w, C_out), in the computation dtype.

encoder_hidden_states may also hold n*B contexts (n > 1): each sample is then denoised
under each of its n contexts, as if the samples and timesteps were tiled n times
(output (n*B, ...), context-major: item i*B + j is sample j under context i*B + j).
The layers before the first one that reads the text (conv_in, transformer_in, and the
first down block's resnet, temporal convolution and spatial self-attention) run once for
the n of them. Classifier-free guidance (`sampling.schedule.guided_eps`) uses this for
its two halves.

Frames are folded into the batch for the spatial layers, as diffusers does; the
temporal layers (TemporalConvLayer, TransformerTemporalModel) unfold them. The
blocks live in `unet3d_blocks.py`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ti2v_jax.models.layers import GroupNorm, resolve_attention, check_group_norm, conv, linear
from ti2v_jax.models.unet3d_blocks import DownBlock3D, TransformerTemporalModel, UNetMidBlock3DCrossAttn, UpBlock3D

# For the converter: diffusers' UNet3D checkpoints need no renaming and hold no buffers.
TORCH_RENAMES: list[tuple[str, str]] = []
TORCH_IGNORE: list[str] = []

# diffusers' defaults (UNet3DConditionModel.__init__), used for keys a config leaves out.
DEFAULTS = dict(
    sample_size=None, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1024,
    attention_head_dim=64, num_attention_heads=None, time_cond_proj_dim=None,
)
_DOWN = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}
_UP = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}


def parse_config(config: dict) -> dict:
    """The diffusers config with defaults filled in; ValueError naming the key for anything unsupported."""
    unknown = [k for k in config if not k.startswith("_") and k not in DEFAULTS]
    if unknown:
        raise ValueError(f"UNet3DConditionModel: unknown config key(s) {unknown}")
    c = {**DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}

    def bad(key, why):
        raise ValueError(f"UNet3DConditionModel: unsupported {key}={c[key]!r} ({why})")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for key in ("in_channels", "out_channels", "layers_per_block", "downsample_padding", "cross_attention_dim"):
        if not is_int(c[key]):
            bad(key, "must be an integer")
    if not isinstance(c["block_out_channels"], (list, tuple)) or not all(map(is_int, c["block_out_channels"])):
        bad("block_out_channels", "must be a list of integers")
    if not isinstance(c["norm_eps"], (int, float)) or isinstance(c["norm_eps"], bool):
        bad("norm_eps", "must be a number")

    if c["num_attention_heads"] is not None:
        bad("num_attention_heads", "diffusers' UNet3D does not accept it either; use attention_head_dim")
    if not isinstance(c["attention_head_dim"], int) or c["attention_head_dim"] <= 0:
        bad("attention_head_dim", "must be a positive int: transformer_in uses it as one head width")
    if c["time_cond_proj_dim"] is not None:
        bad("time_cond_proj_dim", "timestep conditioning is not implemented")
    if c["act_fn"] not in ("silu", "swish"):
        bad("act_fn", "only silu")
    if c["mid_block_scale_factor"] != 1:
        bad("mid_block_scale_factor", "only 1")
    if not isinstance(c["norm_num_groups"], int):
        bad("norm_num_groups", "the resnets need group norm")
    if c["downsample_padding"] not in (0, 1):
        bad("downsample_padding", "0 or 1")
    if c["layers_per_block"] < 1:
        bad("layers_per_block", "at least 1")
    n = len(c["block_out_channels"])
    if any(t not in _DOWN for t in c["down_block_types"]) or len(c["down_block_types"]) != n:
        bad("down_block_types", f"{len(c['block_out_channels'])} of {sorted(_DOWN)}")
    if any(t not in _UP for t in c["up_block_types"]) or len(c["up_block_types"]) != n:
        bad("up_block_types", f"{len(c['block_out_channels'])} of {sorted(_UP)}")
    for ch in c["block_out_channels"]:
        if ch % c["norm_num_groups"]:
            bad("block_out_channels", f"{ch} is not a multiple of norm_num_groups={c['norm_num_groups']}")
        if ch < c["attention_head_dim"]:
            bad("block_out_channels", f"{ch} gives no attention head of width {c['attention_head_dim']}")
    return c


def timestep_embedding(timesteps, dim: int, max_period: int = 10000):
    """diffusers get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0), float32: [cos, sin]."""
    half = dim // 2
    # The frequencies as torch forms them in float32; exp correctly rounded (torch's may differ by 1 ulp).
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.asarray(freqs)[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nnx.Module):
    """diffusers TimestepEmbedding: linear_1, SiLU, linear_2."""

    def __init__(self, in_channels: int, time_embed_dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_1 = linear(in_channels, time_embed_dim, **kw)
        self.linear_2 = linear(time_embed_dim, time_embed_dim, **kw)

    def __call__(self, x):
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


def _building_rngs(rngs: nnx.Rngs) -> nnx.Rngs:
    """A private Rngs seeded from `rngs` whose call counter is a numpy scalar.

    flax 0.12 reads `.sharding` on every update of a traced counter, and under
    `nnx.eval_shape` that walks the whole trace, which makes building the full-size U-Net
    abstractly quadratic in its size; a numpy counter keeps it linear.
    """
    local = nnx.Rngs(rngs.params())
    local.default.count.set_raw_value(np.zeros(local.default.count.get_value().shape, np.uint32))
    return local


class UNet3DConditionModel(nnx.Module):
    """diffusers UNet3DConditionModel; see the module docstring for the call signature.

    attention: the attention kernel of every transformer in it (`layers.ATTENTION_CHOICES`;
    None: automatic per platform), a static attribute: part of the graph definition, so
    programs compiled for one choice are never reused for another.
    group_norm: the resnets' and temporal convolutions' GroupNorm formulation
    (`layers.GROUP_NORM_CHOICES`; "one_pass" is an opt-in variant, off by default), likewise static.
    """

    def __init__(self, config: dict, *, dtype=jnp.float32, param_dtype=jnp.float32, attention: str | None = None,
                 group_norm: str = "two_pass", rngs: nnx.Rngs = None):
        rngs = _building_rngs(rngs if rngs is not None else nnx.Rngs(0))
        c = parse_config(config)
        attention = self.attention = resolve_attention(attention)
        self.group_norm = check_group_norm(group_norm)
        # Plain static attributes (a dict would make the graphdef unhashable for jit).
        self.in_channels, self.out_channels = c["in_channels"], c["out_channels"]
        ss = c["sample_size"]
        self.sample_size = tuple(ss) if isinstance(ss, (list, tuple)) else ss
        self.time_proj_channels = c["block_out_channels"][0]
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        channels = list(c["block_out_channels"])
        groups, eps, head_dim = c["norm_num_groups"], c["norm_eps"], c["attention_head_dim"]
        cross_dim, layers = c["cross_attention_dim"], c["layers_per_block"]
        temb = channels[0] * 4

        self.conv_in = conv(c["in_channels"], channels[0], 3, padding=1, **kw)
        self.time_embedding = TimestepEmbedding(channels[0], temb, **kw)
        # transformer_in: 8 heads of width attention_head_dim (diffusers hard-codes the 8).
        self.transformer_in = TransformerTemporalModel(8, head_dim, in_channels=channels[0], norm_num_groups=groups,
                                                       attention=attention, **kw)

        blocks = dict(temb_channels=temb, eps=eps, groups=groups, cross_attention_dim=cross_dim,
                      attention=attention, group_norm=group_norm, **kw)
        down = []
        out_ch = channels[0]
        for i, kind in enumerate(c["down_block_types"]):
            in_ch, out_ch = out_ch, channels[i]
            down.append(DownBlock3D(in_ch, out_ch, num_layers=layers, add_downsample=i < len(channels) - 1,
                                    downsample_padding=c["downsample_padding"],
                                    attention_head_dim=head_dim if _DOWN[kind] else None, **blocks))
        self.down_blocks = nnx.List(down)

        self.mid_block = UNetMidBlock3DCrossAttn(channels[-1], attention_head_dim=head_dim, **blocks)

        up = []
        rev = channels[::-1]
        out_ch = rev[0]
        for i, kind in enumerate(c["up_block_types"]):
            prev, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, len(rev) - 1)]
            up.append(UpBlock3D(in_ch, prev, out_ch, num_layers=layers + 1, add_upsample=i < len(rev) - 1,
                                attention_head_dim=head_dim if _UP[kind] else None, **blocks))
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = GroupNorm(groups, channels[0], eps, group_norm=group_norm, **kw)
        self.conv_out = conv(channels[0], c["out_channels"], 3, padding=1, **kw)

    def __call__(self, sample, timesteps, encoder_hidden_states):
        b, f, h, w, _ = sample.shape
        n, rest = divmod(encoder_hidden_states.shape[0], b)
        if rest or not n:
            raise ValueError(f"UNet3DConditionModel: {encoder_hidden_states.shape[0]} contexts for {b} samples; "
                             "give one per sample or n per sample (n x the batch, context-major)")
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        # The sinusoid stays float32; linear_1 casts it to the computation dtype, as diffusers does.
        emb = self.time_embedding(timestep_embedding(timesteps, self.time_proj_channels))
        x = self.conv_in(sample.astype(self.dtype).reshape(b * f, h, w, -1))
        x_in = x = self.transformer_in(x, f)
        context = jnp.repeat(encoder_hidden_states.astype(self.dtype), f, axis=0)
        # With n contexts per sample, the text-free prefix (above, and the first down block's up
        # to its first cross-attention) runs once for the n of them; the first block tiles.
        x, res = self.down_blocks[0](x, jnp.repeat(emb, f, axis=0), context, f, shared=n)
        skips = (jnp.tile(x_in, (n, 1, 1, 1)) if n > 1 else x_in,) + res
        if n > 1:
            emb, b = jnp.tile(emb, (n, 1)), n * b
        emb = jnp.repeat(emb, f, axis=0)
        for block in self.down_blocks[1:]:
            x, res = block(x, emb, context, f)
            skips += res

        x = self.mid_block(x, emb, context, f)

        for block in self.up_blocks:
            k = len(block.resnets)
            res, skips = skips[-k:], skips[:-k]
            # Upsample to the next skip's size: 2x when the latent divides by 2**levels, the
            # size diffusers forwards (upsample_size) when it does not.
            size = tuple(skips[-1].shape[1:3]) if skips else None
            x = block(x, res, emb, context, f, size)

        x = self.conv_out(jax.nn.silu(self.conv_norm_out(x)))
        return x.reshape(b, f, h, w, -1)


def from_torch_layout(x):
    """(B, C, F, H, W) as diffusers takes video latents -> (B, F, H, W, C)."""
    return jnp.transpose(x, (0, 2, 3, 4, 1))


def to_torch_layout(x):
    """(B, F, H, W, C) -> (B, C, F, H, W)."""
    return jnp.transpose(x, (0, 4, 1, 2, 3))
