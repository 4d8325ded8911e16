"""Layers shared by the U-Net, the VAE and the text encoder.

Attribute names mirror diffusers/transformers module names, so that
`ti2v_jax.weights.mapping` turns a parameter path into its PyTorch name
mechanically. Everything is channels-last: images (N, H, W, C), videos
(B, F, H, W, C), sequences (B, T, C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ti2v_jax.errors import SettingsError
from ti2v_jax.models.attention import (  # noqa: F401  (the layers' users import them from here)
    ATTENTION_CHOICES,
    attention,
    blocked_layers,
    check_attention,
    map_in_blocks,
    resolve_attention,
)

# GroupNorm formulations (the `group_norm=` of UNet3DConditionModel; a static attribute):
#   "two_pass"  the default: the mean, then the variance of the centred values (stable)
#   "one_pass"  OPT-IN, not measured yet: sum and sum of squares in one reduction over the
#               input, var = E[x^2] - E[x]^2 (float32), then one scale-and-shift pass; reads
#               the activation once less per norm (the profile's normalisation kernels are
#               memory-bound), at the cost of cancellation for inputs with a large common offset
GROUP_NORM_CHOICES = ("two_pass", "one_pass")


def check_group_norm(group_norm: str) -> str:
    if group_norm not in GROUP_NORM_CHOICES:
        raise SettingsError(f"group_norm={group_norm!r} is not a GroupNorm formulation; choose one of "
                            + ", ".join(repr(c) for c in GROUP_NORM_CHOICES))
    return group_norm


class GroupNorm(nnx.Module):
    """torch.nn.GroupNorm over channels-last input, statistics in float32.

    Normalises over every axis but the batch axis (0) within each group, which is
    what torch does for (N, C, H, W) and for (B, C, F, H, W) alike. `group_norm`: the
    formulation (`GROUP_NORM_CHOICES`).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float, *, group_norm: str = "two_pass",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.num_groups = num_groups
        self.eps = eps
        self.dtype = dtype
        self.group_norm = check_group_norm(group_norm)
        self.scale = nnx.Param(jnp.ones((num_channels,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_channels,), param_dtype))

    def __call__(self, x):
        shape = x.shape
        n, c, g = shape[0], shape[-1], self.num_groups
        xf = x.astype(jnp.float32).reshape(n, -1, c)
        count = xf.shape[1] * (c // g)

        def group_mean(per_channel_sum):  # (n, c) -> the group's mean, broadcast to (n, 1, c)
            s = per_channel_sum.reshape(n, g, c // g).sum(axis=-1) / count
            return jnp.repeat(s, c // g, axis=-1)[:, None, :]

        # Sums over the positions first (contiguous rows, channels in vector lanes), then over
        # each group's channels: XLA:CPU reduces a (N, H*W, G, C/G) array over axes (1, 3)
        # much more slowly.
        if self.group_norm == "one_pass":
            mean = group_mean(xf.sum(axis=1))
            var = jnp.maximum(group_mean(jnp.square(xf).sum(axis=1)) - jnp.square(mean), 0.0)
            a = jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
            b = self.bias[...].astype(jnp.float32) - mean * a
            return (xf * a + b).reshape(shape).astype(self.dtype)
        mean = group_mean(xf.sum(axis=1))
        xf = xf - mean
        var = group_mean(jnp.square(xf).sum(axis=1))
        xf = (xf * jax.lax.rsqrt(var + self.eps)).reshape(shape)
        out = xf * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return out.astype(self.dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis, statistics in float32."""

    def __init__(self, num_features: int, eps: float = 1e-5, *, elementwise_affine: bool = True,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
            self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        mean = xf.mean(axis=-1, keepdims=True)
        var = jnp.square(xf - mean).mean(axis=-1, keepdims=True)
        xf = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        if self.elementwise_affine:
            xf = xf * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return xf.astype(self.dtype)


def linear(in_features, out_features, *, bias=True, dtype=jnp.float32, param_dtype=jnp.float32, rngs):
    return nnx.Linear(in_features, out_features, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def conv(in_channels, out_channels, kernel_size, *, stride=1, padding=0, bias=True, dtype=jnp.float32,
         param_dtype=jnp.float32, rngs):
    """torch.nn.Conv{1,2,3}d with torch's symmetric integer padding (channels-last)."""
    ks = (kernel_size,) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
    pads = (padding,) * len(ks) if isinstance(padding, int) else tuple(padding)
    strides = (stride,) * len(ks) if isinstance(stride, int) else tuple(stride)
    return nnx.Conv(in_channels, out_channels, ks, strides=strides, padding=tuple((p, p) for p in pads),
                    use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class Attention(nnx.Module):
    """diffusers `Attention` (to_q/to_k/to_v/to_out.0): self- or cross-attention.

    attention: the kernel (`ATTENTION_CHOICES`), a static attribute.
    """

    def __init__(self, query_dim: int, *, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 bias: bool = False, out_bias: bool = True, attention: str | None = None, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        inner = heads * dim_head
        kv_dim = cross_attention_dim or query_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        self.attention = resolve_attention(attention)
        self.to_q = linear(query_dim, inner, bias=bias, **kw)
        self.to_k = linear(kv_dim, inner, bias=bias, **kw)
        self.to_v = linear(kv_dim, inner, bias=bias, **kw)
        self.to_out = nnx.List([linear(inner, query_dim, bias=out_bias, **kw)])

    def __call__(self, x, context=None):
        context = x if context is None else context
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads,
                        implementation=self.attention)
        return self.to_out[0](out)


def gelu(x):
    """Exact (erf) GELU in PyTorch's formula, x * 0.5 * (1 + erf(x / sqrt(2))), as torch's CPU
    and CUDA kernels compute it. `jax.nn.gelu(approximate=False)` uses erfc instead, which
    XLA:CPU evaluates several times more slowly; both are within 1.5e-6 of
    torch.nn.functional.gelu over [-12, 12]."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * jnp.asarray(0.5 ** 0.5, x.dtype)))


class GEGLU(nnx.Module):
    """diffusers GEGLU: a projection to 2x width, one half gating the other with exact GELU."""

    def __init__(self, dim_in: int, dim_out: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.proj = linear(dim_in, dim_out * 2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        h, gate = jnp.split(self.proj(x), 2, axis=-1)
        return h * gelu(gate)


class FeedForward(nnx.Module):
    """diffusers FeedForward with GEGLU: net.0 (GEGLU), net.1 (dropout, no weights), net.2 (Linear)."""

    def __init__(self, dim: int, *, mult: int = 4, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        inner = dim * mult
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.net = nnx.List([GEGLU(dim, inner, **kw), nnx.Dropout(0.0), linear(inner, dim, **kw)])

    def __call__(self, x):
        return self.net[2](self.net[0](x))


class ResnetBlock2D(nnx.Module):
    """diffusers ResnetBlock2D ("default" time-embedding norm, output_scale_factor 1) on (N, H, W, C)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, *, temb_channels: int | None = 512,
                 groups: int = 32, eps: float = 1e-6, group_norm: str = "two_pass", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        out_channels = out_channels or in_channels
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = GroupNorm(groups, in_channels, eps, group_norm=group_norm, **kw)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1, **kw)
        self.time_emb_proj = linear(temb_channels, out_channels, **kw) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps, group_norm=group_norm, **kw)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, **kw)
        self.conv_shortcut = conv(in_channels, out_channels, 1, **kw) if in_channels != out_channels else None

    def __call__(self, x, temb=None):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Downsample2D(nnx.Module):
    """diffusers Downsample2D with a conv: stride 2, padding 1; padding 0 means the VAE's (0, 1, 0, 1) pad."""

    def __init__(self, channels: int, *, padding: int = 1, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.padding = padding
        self.conv = conv(channels, channels, 3, stride=2, padding=padding, dtype=dtype, param_dtype=param_dtype,
                         rngs=rngs)

    def __call__(self, x):
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return self.conv(x)


def nearest_resize(x, size):
    """torch F.interpolate(mode="nearest") on (N, H, W, C): source index floor(i * in / out)."""
    h, w = x.shape[1], x.shape[2]
    oh, ow = size
    if (oh, ow) == (2 * h, 2 * w):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    ih = jnp.floor(jnp.arange(oh) * (h / oh)).astype(jnp.int32)
    iw = jnp.floor(jnp.arange(ow) * (w / ow)).astype(jnp.int32)
    return x[:, ih][:, :, iw]


class Upsample2D(nnx.Module):
    """diffusers Upsample2D with a conv: nearest 2x (or to `output_size`), then 3x3 conv."""

    def __init__(self, channels: int, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = conv(channels, channels, 3, padding=1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, output_size=None):
        size = output_size or (2 * x.shape[1], 2 * x.shape[2])
        if tuple(size) == (2 * x.shape[1], 2 * x.shape[2]):
            return _conv_of_2x_nearest(self.conv, x)
        return self.conv(nearest_resize(x, size))


def _conv_of_2x_nearest(c: nnx.Conv, x):
    """`c` (3x3, padding 1) applied to x upsampled 2x by nearest, computed on x itself.

    Output pixel (2i + a, 2j + b) sees input rows i-1, i (a = 0) or i, i+1 (a = 1), the
    kernel's rows falling on the same input row summed (likewise columns), so each of the
    four phases (a, b) is a 2x2 convolution of x: 16 instead of 36 multiply-adds per output
    channel and input channel per input pixel, the same sums up to float rounding.
    """
    n, h, w, _ = x.shape
    x, k, bias = c.promote_dtype((x, c.kernel[...], c.bias[...]), dtype=c.dtype)

    def fold(k, axis):  # the 3 taps along `axis` -> phase 0's and phase 1's 2 taps
        k0, k1, k2 = jnp.split(k, 3, axis=axis)
        return jnp.concatenate([k0, k1 + k2], axis), jnp.concatenate([k0 + k1, k2], axis)

    side = ((1, 0), (0, 1))  # phase 0 pads before (rows i-1, i), phase 1 after (rows i, i+1)
    phases = [jax.lax.conv_general_dilated(x, kab, (1, 1), (side[a], side[b]),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=c.precision)
              for a, ka in enumerate(fold(k, 0)) for b, kab in enumerate(fold(ka, 1))]
    y = jnp.stack(phases).reshape(2, 2, n, h, w, -1).transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * h, 2 * w, -1)
    return y + bias
