"""diffusers' AutoencoderKL in Flax NNX, channels-last.

`encode(images (N, H, W, in_channels)) -> (mean, logvar)` of the latent posterior,
each (N, H/2^k, W/2^k, latent_channels), logvar clamped to [-30, 20] as diffusers'
DiagonalGaussianDistribution does; `decode(latents) -> images`. The scaling factor
is read into `self.scaling_factor` but never applied here: the pipeline multiplies
and divides by it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import Attention, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D, resolve_attention, conv

# diffusers < 0.16 (the real ModelScope VAE was saved by 0.15) named the mid-block
# attention's projections query/key/value/proj_attn; diffusers renames them on load
# (ModelMixin._fix_state_dict_keys_on_load). group_norm kept its name.
_LEGACY_ATTN = r"^((?:en|de)coder\.mid_block\.attentions\.\d+)\."
TORCH_RENAMES = [
    (_LEGACY_ATTN + r"query\.", r"\1.to_q."),
    (_LEGACY_ATTN + r"key\.", r"\1.to_k."),
    (_LEGACY_ATTN + r"value\.", r"\1.to_v."),
    (_LEGACY_ATTN + r"proj_attn\.", r"\1.to_out.0."),
]
TORCH_IGNORE: list[str] = []

_EPS = 1e-6  # diffusers' VAE uses 1e-6 in every GroupNorm (resnets, attention, conv_norm_out)

_DEFAULTS = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                 up_block_types=("UpDecoderBlock2D",), block_out_channels=(64,), layers_per_block=1,
                 act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=32, scaling_factor=0.18215,
                 shift_factor=None, latents_mean=None, latents_std=None, force_upcast=True,
                 use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True)


def _vae_config(config: dict) -> dict:
    cfg = dict(_DEFAULTS)
    for k, v in config.items():
        if k in cfg:
            cfg[k] = v
        elif not k.startswith("_"):
            raise ValueError(f"AutoencoderKL config key {k!r} is not supported")
    n = len(cfg["block_out_channels"])
    for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if len(cfg[key]) != n or any(t != want for t in cfg[key]):
            raise ValueError(f"AutoencoderKL {key}={cfg[key]!r} is not supported: need {n} x {want!r}")
    if cfg["act_fn"] != "silu":
        raise ValueError(f"AutoencoderKL act_fn={cfg['act_fn']!r} is not supported (only 'silu')")
    for key in ("shift_factor", "latents_mean", "latents_std"):
        if cfg[key] is not None:
            raise ValueError(f"AutoencoderKL {key}={cfg[key]!r} is not supported (only None)")
    return cfg


class VAEAttention(Attention):
    """diffusers `Attention` as the VAE mid-block builds it: GroupNorm, biased q/k/v, residual."""

    def __init__(self, channels: int, *, groups: int, attention: str | None = None, dtype, param_dtype, rngs):
        # attention_head_dim is the channel count, so one head.
        super().__init__(channels, heads=1, dim_head=channels, bias=True, attention=attention, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
        self.group_norm = GroupNorm(groups, channels, _EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        n, h, w, c = x.shape
        out = super().__call__(self.group_norm(x).reshape(n, h * w, c))
        return out.reshape(n, h, w, c) + x


class UNetMidBlock2D(nnx.Module):
    def __init__(self, channels: int, *, groups: int, add_attention: bool, attention: str | None = None, dtype,
                 param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, temb_channels=None, groups=groups, eps=_EPS,
                                               **kw) for _ in range(2)])
        self.attentions = nnx.List([VAEAttention(channels, groups=groups, attention=attention, **kw)]
                                   if add_attention else [])

    def __call__(self, x):
        x = self.resnets[0](x)
        if len(self.attentions):
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, groups: int, add_downsample: bool,
                 dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                          eps=_EPS, **kw) for i in range(num_layers)])
        self.downsamplers = nnx.List([Downsample2D(out_channels, padding=0, **kw)]) if add_downsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, groups: int, add_upsample: bool,
                 dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels=None, groups=groups,
                          eps=_EPS, **kw) for i in range(num_layers)])
        self.upsamplers = nnx.List([Upsample2D(out_channels, **kw)]) if add_upsample else None

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nnx.Module):
    def __init__(self, cfg: dict, *, attention: str | None = None, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        ch, groups = list(cfg["block_out_channels"]), cfg["norm_num_groups"]
        self.conv_in = conv(cfg["in_channels"], ch[0], 3, padding=1, **kw)
        self.down_blocks = nnx.List([
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], num_layers=cfg["layers_per_block"], groups=groups,
                               add_downsample=i < len(ch) - 1, **kw) for i in range(len(ch))])
        self.mid_block = UNetMidBlock2D(ch[-1], groups=groups, add_attention=cfg["mid_block_add_attention"],
                                        attention=attention, **kw)
        self.conv_norm_out = GroupNorm(groups, ch[-1], _EPS, **kw)
        self.conv_out = conv(ch[-1], 2 * cfg["latent_channels"], 3, padding=1, **kw)

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    def __init__(self, cfg: dict, *, attention: str | None = None, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        ch, groups = list(cfg["block_out_channels"]), cfg["norm_num_groups"]
        rev = ch[::-1]
        self.conv_in = conv(cfg["latent_channels"], ch[-1], 3, padding=1, **kw)
        self.mid_block = UNetMidBlock2D(ch[-1], groups=groups, add_attention=cfg["mid_block_add_attention"],
                                        attention=attention, **kw)
        self.up_blocks = nnx.List([
            UpDecoderBlock2D(rev[max(i - 1, 0)], rev[i], num_layers=cfg["layers_per_block"] + 1, groups=groups,
                             add_upsample=i < len(ch) - 1, **kw) for i in range(len(ch))])
        self.conv_norm_out = GroupNorm(groups, ch[0], _EPS, **kw)
        self.conv_out = conv(ch[0], cfg["out_channels"], 3, padding=1, **kw)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
    """encode(images (N, H, W, C)) -> (mean, logvar); decode(latents) -> images. Unscaled latents.

    attention: the mid-blocks' attention kernel (`layers.ATTENTION_CHOICES`; None: automatic
    per platform), a static attribute (part of every compiled program's cache key).
    """

    def __init__(self, config: dict, *, dtype=jnp.float32, param_dtype=jnp.float32, attention: str | None = None,
                 rngs: nnx.Rngs = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        cfg = _vae_config(config)
        attention = self.attention = resolve_attention(attention)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        lc = cfg["latent_channels"]
        self.scaling_factor = float(cfg["scaling_factor"])
        self.latent_channels = lc
        self.encoder = Encoder(cfg, attention=attention, **kw)
        self.decoder = Decoder(cfg, attention=attention, **kw)
        self.quant_conv = conv(2 * lc, 2 * lc, 1, **kw) if cfg["use_quant_conv"] else None
        self.post_quant_conv = conv(lc, lc, 1, **kw) if cfg["use_post_quant_conv"] else None

    def encode(self, images):
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, latents):
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)

    def __call__(self, images):
        """Reconstruction through the posterior mean (diffusers' forward with sample_posterior=False)."""
        return self.decode(self.encode(images)[0])
