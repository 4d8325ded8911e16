"""Building blocks of diffusers' `UNet3DConditionModel`, channels-last.

Spatial layers see frames folded into the batch, (B*F, H, W, C), as PyTorch's
(B*F, C, H, W); temporal layers unfold them to (B, F, H, W, C). `num_frames` is
a static Python int read from the input shape, so nothing loops over frames.
Attribute names are diffusers' (unet_3d_blocks.py, transformer_2d.py,
transformer_temporal.py, attention.py, resnet.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ti2v_jax.models.layers import (Attention, Downsample2D, FeedForward, GroupNorm, LayerNorm, ResnetBlock2D,
                                    Upsample2D, blocked_layers, resolve_attention, conv, linear,
                                    map_in_blocks)


def _placeholder():
    """A weightless module standing where diffusers' nn.Sequential has SiLU/Dropout, to keep its indices."""
    return nnx.Dropout(0.0)


class TemporalConvLayer(nnx.Module):
    """diffusers TemporalConvLayer: four (GroupNorm, SiLU, Conv3d (3,1,1)) stages over frames, plus identity.

    conv1 = [norm, silu, conv]; conv2..4 = [norm, silu, dropout, conv]. The last conv
    is zero-initialised, as in diffusers, so a fresh layer is the identity.
    """

    def __init__(self, in_dim: int, out_dim: int | None = None, *, norm_num_groups: int = 32,
                 group_norm: str = "two_pass", dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        out_dim = out_dim or in_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        gn = dict(kw, group_norm=group_norm)

        def tconv(cin, cout):
            return conv(cin, cout, (3, 1, 1), padding=(1, 0, 0), **kw)

        self.conv1 = nnx.List([GroupNorm(norm_num_groups, in_dim, 1e-5, **gn), _placeholder(), tconv(in_dim, out_dim)])
        self.conv2 = nnx.List([GroupNorm(norm_num_groups, out_dim, 1e-5, **gn), _placeholder(), _placeholder(),
                               tconv(out_dim, in_dim)])
        self.conv3 = nnx.List([GroupNorm(norm_num_groups, out_dim, 1e-5, **gn), _placeholder(), _placeholder(),
                               tconv(out_dim, in_dim)])
        self.conv4 = nnx.List([GroupNorm(norm_num_groups, out_dim, 1e-5, **gn), _placeholder(), _placeholder(),
                               tconv(out_dim, in_dim)])
        last = self.conv4[-1]
        # set_value, not `[...] =`: an indexed set on a traced value is slow under nnx.eval_shape.
        last.kernel.set_value(jnp.zeros_like(last.kernel.get_value()))
        last.bias.set_value(jnp.zeros_like(last.bias.get_value()))

    def __call__(self, x, num_frames: int):
        bf, h, w, c = x.shape
        x = x.reshape(bf // num_frames, num_frames, h, w, c)
        identity = x
        for seq in (self.conv1, self.conv2, self.conv3, self.conv4):
            # GroupNorm on (B, F, H, W, C) pools over frames too, as torch's on (B, C, F, H, W).
            x = _frame_conv(seq[-1], jax.nn.silu(seq[0](x)))
        return (identity + x).reshape(bf, h, w, -1)


def _frame_conv(c: nnx.Conv, x):
    """`c`, a Conv3d with kernel (3, 1, 1), on (B, F, H, W, C), computed as a 2D (3, 1) convolution
    over (B, F, H*W, C): the same kernel and the same sums, in a layout (NHWC) cuDNN takes as it
    is. As a 3D convolution, XLA handed the 88 temporal convolutions of a pass to cuDNN in NCDHW
    order and cuDNN transposed their operands: hundreds of layout kernels per guidance pair,
    gone this way; faster on CPU too (benchmarks/RESULTS.md)."""
    b, f, h, w, cin = x.shape
    x, k, bias = c.promote_dtype((x.reshape(b, f, h * w, cin), c.kernel[...], c.bias[...]), dtype=c.dtype)
    y = jax.lax.conv_general_dilated(x, k.reshape((k.shape[0], 1, cin, -1)), (1, 1), tuple(c.padding[:2]),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=c.precision)
    return (y + bias).reshape(b, f, h, w, -1)


def _over_sequences(fn, args: tuple, tokens: int, inner: int, attention):
    """fn(*args) over independent sequences (the leading axis of every arg).

    With the blocked formulation (`layers.blocked_layers(attention)`: attention "blocked",
    the automatic choice on CPU) the sequences go through in blocks
    whose largest intermediate, the feed-forward's GEGLU projection (8 x inner wide), fits
    in cache (`layers.map_in_blocks`), which is faster on XLA:CPU (benchmarks/RESULTS.md).
    Elsewhere one call over all sequences.
    """
    if blocked_layers(attention):
        return map_in_blocks(fn, args, tokens * 8 * inner * 4)
    return fn(*args)


class BasicTransformerBlock(nnx.Module):
    """diffusers BasicTransformerBlock (layer_norm, GEGLU, no attention bias): self-attn, attn2, feed-forward.

    attn2 is cross-attention over `context`, or, with double_self_attention, a second self-attention.
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, *,
                 cross_attention_dim: int | None = None, double_self_attention: bool = False,
                 attention: str | None = None, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        heads = dict(heads=num_attention_heads, dim_head=attention_head_dim, attention=attention)
        self.double_self_attention = double_self_attention
        self.norm1 = LayerNorm(dim, 1e-5, **kw)
        self.attn1 = Attention(dim, **heads, **kw)
        self.norm2 = LayerNorm(dim, 1e-5, **kw)
        self.attn2 = Attention(dim, cross_attention_dim=None if double_self_attention else cross_attention_dim,
                               **heads, **kw)
        self.norm3 = LayerNorm(dim, 1e-5, **kw)
        self.ff = FeedForward(dim, **kw)

    def __call__(self, x, context=None):
        return self.attend_text(self.self_attend(x), context)

    def self_attend(self, x):
        """The part before attn2: self-attention, which reads no text."""
        return self.attn1(self.norm1(x)) + x

    def attend_text(self, x, context=None):
        """The rest, from attn2 (cross-attention to `context`) on."""
        x = self.attn2(self.norm2(x), None if self.double_self_attention else context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nnx.Module):
    """diffusers Transformer2DModel, continuous input with linear projections (as UNet3D builds it).

    Attends over the H*W pixels of each frame; cross-attends to the text context.
    """

    def __init__(self, num_attention_heads: int, attention_head_dim: int, *, in_channels: int,
                 cross_attention_dim: int, norm_num_groups: int = 32, attention: str | None = None,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        inner = num_attention_heads * attention_head_dim
        attention = self.attention = resolve_attention(attention)
        self.norm = GroupNorm(norm_num_groups, in_channels, 1e-6, **kw)
        self.proj_in = linear(in_channels, inner, **kw)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim,
                                  cross_attention_dim=cross_attention_dim, attention=attention, **kw)])
        self.proj_out = linear(inner, in_channels, **kw)

    def __call__(self, x, context, shared: int = 1):
        """x (N, H, W, C) frames, context (N, T, D) one per frame.

        shared > 1: x holds the frames of B samples and context `shared` x as many,
        context-major (as `UNet3DConditionModel` takes them). The layers before the first
        cross-attention, which read no text, then run once per frame and their output is
        tiled `shared` times; the output has shared x N frames.
        """
        n, h, w, c = x.shape
        inner = self.proj_in.out_features
        first, rest = self.transformer_blocks[0], self.transformer_blocks[1:]
        residual, x = x, self.norm(x).reshape(n, h * w, c)
        if shared > 1:
            x = _over_sequences(lambda x: first.self_attend(self.proj_in(x)), (x,), h * w, inner, self.attention)
            x, residual = jnp.tile(x, (shared, 1, 1)), jnp.tile(residual, (shared, 1, 1, 1))

        def per_frame(x, context):
            x = first.attend_text(x, context) if shared > 1 else first(self.proj_in(x), context)
            for block in rest:
                x = block(x, context)
            return self.proj_out(x)

        x = _over_sequences(per_frame, (x, context), h * w, inner, self.attention)
        return x.reshape(residual.shape) + residual


class TransformerTemporalModel(nnx.Module):
    """diffusers TransformerTemporalModel: attention across frames, independently at every pixel.

    Its blocks use double_self_attention, so no text context enters.
    """

    def __init__(self, num_attention_heads: int, attention_head_dim: int, *, in_channels: int,
                 norm_num_groups: int = 32, attention: str | None = None, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        inner = num_attention_heads * attention_head_dim
        attention = self.attention = resolve_attention(attention)
        self.norm = GroupNorm(norm_num_groups, in_channels, 1e-6, **kw)
        self.proj_in = linear(in_channels, inner, **kw)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim, double_self_attention=True,
                                  attention=attention, **kw)])
        self.proj_out = linear(inner, in_channels, **kw)

    def __call__(self, x, num_frames: int):
        bf, h, w, c = x.shape
        b = bf // num_frames
        residual = x
        x = self.norm(x.reshape(b, num_frames, h, w, c))  # statistics over frames too, as in torch
        x = x.transpose(0, 2, 3, 1, 4).reshape(b * h * w, num_frames, c)

        def per_pixel(x):
            x = self.proj_in(x)
            for block in self.transformer_blocks:
                x = block(x)
            return self.proj_out(x)

        x = _over_sequences(per_pixel, (x,), num_frames, self.proj_in.out_features, self.attention)
        x = x.reshape(b, h, w, num_frames, c).transpose(0, 3, 1, 2, 4).reshape(bf, h, w, c)
        return x + residual


class _Block3D(nnx.Module):
    """Shared layer stack of the 3D down/up blocks: resnet, temporal conv, [spatial attn, temporal attn]."""

    def _build(self, resnet_in: list[int], out_channels: int, *, temb_channels: int, eps: float, groups: int,
               attention_head_dim: int | None, cross_attention_dim: int | None, attention: str | None, kw: dict,
               group_norm: str = "two_pass"):
        self.resnets = nnx.List([ResnetBlock2D(cin, out_channels, temb_channels=temb_channels, groups=groups, eps=eps,
                                               group_norm=group_norm, **kw) for cin in resnet_in])
        self.temp_convs = nnx.List([TemporalConvLayer(out_channels, out_channels, norm_num_groups=groups,
                                                      group_norm=group_norm, **kw) for _ in resnet_in])
        self.has_cross_attention = attention_head_dim is not None
        if self.has_cross_attention:
            # diffusers' naming quirk: `attention_head_dim` is passed as the number of heads, so
            # there are C // value heads of width value.
            heads = out_channels // attention_head_dim
            self.attentions = nnx.List([
                Transformer2DModel(heads, attention_head_dim, in_channels=out_channels,
                                   cross_attention_dim=cross_attention_dim, norm_num_groups=groups,
                                   attention=attention, **kw)
                for _ in resnet_in])
            self.temp_attentions = nnx.List([
                TransformerTemporalModel(heads, attention_head_dim, in_channels=out_channels, norm_num_groups=groups,
                                         attention=attention, **kw)
                for _ in resnet_in])

    def _layer(self, i: int, x, temb, context, num_frames: int, shared: int = 1):
        """Layer i. shared > 1: x and temb hold B samples, context shared x B (see
        `Transformer2DModel`); the text-free part runs once and the output holds shared x B."""
        x = self.resnets[i](x, temb)
        x = self.temp_convs[i](x, num_frames)
        if self.has_cross_attention:
            x = self.attentions[i](x, context, shared)
            x = self.temp_attentions[i](x, num_frames)
        elif shared > 1:
            x = jnp.tile(x, (shared, 1, 1, 1))
        return x


class DownBlock3D(_Block3D):
    """diffusers DownBlock3D / CrossAttnDownBlock3D (attention when `attention_head_dim` is given)."""

    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, temb_channels: int, eps: float,
                 groups: int, add_downsample: bool, downsample_padding: int = 1,
                 attention_head_dim: int | None = None, cross_attention_dim: int | None = None,
                 attention: str | None = None, group_norm: str = "two_pass", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self._build([in_channels] + [out_channels] * (num_layers - 1), out_channels, temb_channels=temb_channels,
                    eps=eps, groups=groups, attention_head_dim=attention_head_dim,
                    cross_attention_dim=cross_attention_dim, attention=attention, kw=kw, group_norm=group_norm)
        self.downsamplers = (nnx.List([Downsample2D(out_channels, padding=downsample_padding, **kw)])
                             if add_downsample else None)

    def __call__(self, x, temb, context, num_frames: int, shared: int = 1):
        """shared > 1: x and temb (per frame) hold B samples, context shared x B, context-major;
        the first layer's text-free part runs once for the `shared` contexts (see `_layer`)."""
        outputs = ()
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, context, num_frames, shared)
            if shared > 1:
                temb, shared = jnp.tile(temb, (shared, 1)), 1
            outputs += (x,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                x = down(x)
            outputs += (x,)
        return x, outputs


class UpBlock3D(_Block3D):
    """diffusers UpBlock3D / CrossAttnUpBlock3D: each layer first concatenates a skip connection."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, *, num_layers: int,
                 temb_channels: int, eps: float, groups: int, add_upsample: bool,
                 attention_head_dim: int | None = None, cross_attention_dim: int | None = None,
                 attention: str | None = None, group_norm: str = "two_pass", dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        resnet_in = []
        for i in range(num_layers):
            skip = in_channels if i == num_layers - 1 else out_channels
            resnet_in.append((prev_output_channel if i == 0 else out_channels) + skip)
        self._build(resnet_in, out_channels, temb_channels=temb_channels, eps=eps, groups=groups,
                    attention_head_dim=attention_head_dim, cross_attention_dim=cross_attention_dim,
                    attention=attention, kw=kw, group_norm=group_norm)
        self.upsamplers = nnx.List([Upsample2D(out_channels, **kw)]) if add_upsample else None

    def __call__(self, x, skips: tuple, temb, context, num_frames: int, upsample_size=None):
        for i in range(len(self.resnets)):
            x = jnp.concatenate([x, skips[-1 - i]], axis=-1)
            x = self._layer(i, x, temb, context, num_frames)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                x = up(x, upsample_size)
        return x


class UNetMidBlock3DCrossAttn(nnx.Module):
    """diffusers UNetMidBlock3DCrossAttn (one layer): resnet, temp conv, then [attn, temp attn, resnet, temp conv]."""

    def __init__(self, in_channels: int, *, temb_channels: int, eps: float, groups: int, attention_head_dim: int,
                 cross_attention_dim: int, attention: str | None = None, group_norm: str = "two_pass",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        heads = in_channels // attention_head_dim
        self.resnets = nnx.List([ResnetBlock2D(in_channels, in_channels, temb_channels=temb_channels, groups=groups,
                                               eps=eps, group_norm=group_norm, **kw) for _ in range(2)])
        self.temp_convs = nnx.List([TemporalConvLayer(in_channels, in_channels, norm_num_groups=groups,
                                                      group_norm=group_norm, **kw) for _ in range(2)])
        self.attentions = nnx.List([Transformer2DModel(heads, attention_head_dim, in_channels=in_channels,
                                                       cross_attention_dim=cross_attention_dim,
                                                       norm_num_groups=groups, attention=attention, **kw)])
        self.temp_attentions = nnx.List([TransformerTemporalModel(heads, attention_head_dim, in_channels=in_channels,
                                                                  norm_num_groups=groups, attention=attention,
                                                                  **kw)])

    def __call__(self, x, temb, context, num_frames: int):
        x = self.temp_convs[0](self.resnets[0](x, temb), num_frames)
        for i in range(len(self.attentions)):
            x = self.attentions[i](x, context)
            x = self.temp_attentions[i](x, num_frames)
            x = self.temp_convs[i + 1](self.resnets[i + 1](x, temb), num_frames)
        return x
