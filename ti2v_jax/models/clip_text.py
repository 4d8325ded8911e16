"""transformers' CLIPTextModel in Flax NNX: input ids (B, T) -> last_hidden_state (B, T, D).

Pre-LayerNorm transformer with a causal mask and no padding mask, exactly what
transformers computes for `CLIPTextModel(input_ids)` without an `attention_mask`
(as ModelScope/diffusers pipelines call it): padding positions still attend to
everything before them, and earlier positions never see them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .layers import LayerNorm, attention, resolve_attention, gelu, linear

# transformers >= 5 saves CLIPTextModel without the `text_model.` prefix; older
# checkpoints (ModelScope's, transformers 4.27) have it. Our module keeps it.
TORCH_RENAMES = [(r"^(?!text_model\.)", "text_model.")]
# Buffers, not weights: older transformers saved `position_ids` in the state dict.
TORCH_IGNORE = [r"(^|\.)position_ids$"]

_IGNORED_KEYS = {
    "architectures", "attention_dropout", "dropout", "bos_token_id", "eos_token_id", "pad_token_id",
    "initializer_factor", "initializer_range", "model_type", "projection_dim", "torch_dtype", "dtype",
    "transformers_version", "output_attentions", "output_hidden_states", "return_dict", "use_cache",
}


def _check_activation(name: str) -> str:
    if name not in ("gelu", "quick_gelu"):
        raise ValueError(f"hidden_act={name!r} is not supported (only 'gelu' and 'quick_gelu')")
    return name


def _activation(name: str, x):
    if name == "gelu":  # transformers' "gelu" is torch's exact erf GELU
        return gelu(x)
    return x * jax.nn.sigmoid(1.702 * x)  # quick_gelu


class CLIPAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, attention: str | None = None, dtype, param_dtype, rngs):
        if dim % heads:
            raise ValueError(f"hidden_size={dim} is not divisible by num_attention_heads={heads}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.heads = heads
        attention = self.attention = resolve_attention(attention)
        self.k_proj = linear(dim, dim, **kw)
        self.v_proj = linear(dim, dim, **kw)
        self.q_proj = linear(dim, dim, **kw)
        self.out_proj = linear(dim, dim, **kw)

    def __call__(self, x):
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, is_causal=True,
                        implementation=self.attention)
        return self.out_proj(out)


class CLIPMLP(nnx.Module):
    def __init__(self, dim: int, hidden: int, act: str, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = _check_activation(act)
        self.fc1 = linear(dim, hidden, **kw)
        self.fc2 = linear(hidden, dim, **kw)

    def __call__(self, x):
        return self.fc2(_activation(self.act, self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    def __init__(self, cfg: dict, *, attention: str | None = None, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.self_attn = CLIPAttention(d, cfg["num_attention_heads"], attention=attention, **kw)
        self.layer_norm1 = LayerNorm(d, eps, **kw)
        self.mlp = CLIPMLP(d, cfg["intermediate_size"], cfg["hidden_act"], **kw)
        self.layer_norm2 = LayerNorm(d, eps, **kw)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, cfg: dict, *, attention: str | None = None, dtype, param_dtype, rngs):
        self.layers = nnx.List([CLIPEncoderLayer(cfg, attention=attention, dtype=dtype, param_dtype=param_dtype,
                                                 rngs=rngs)
                                for _ in range(cfg["num_hidden_layers"])])

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextEmbeddings(nnx.Module):
    def __init__(self, cfg: dict, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embedding = nnx.Embed(cfg["vocab_size"], cfg["hidden_size"], **kw)
        self.position_embedding = nnx.Embed(cfg["max_position_embeddings"], cfg["hidden_size"], **kw)

    def __call__(self, input_ids):
        t = input_ids.shape[-1]
        n_pos = self.position_embedding.num_embeddings
        if t > n_pos:
            raise ValueError(f"sequence length {t} exceeds max_position_embeddings={n_pos}")
        return self.token_embedding(input_ids) + self.position_embedding(jnp.arange(t))[None]


class CLIPTextTransformer(nnx.Module):
    def __init__(self, cfg: dict, *, attention: str | None = None, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embeddings = CLIPTextEmbeddings(cfg, **kw)
        self.encoder = CLIPEncoder(cfg, attention=attention, **kw)
        self.final_layer_norm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"], **kw)

    def __call__(self, input_ids):
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids)))


def _text_config(config: dict) -> dict:
    """The text settings, with transformers' CLIPTextConfig defaults; unsupported values raise."""
    cfg = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
               num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    for k, v in config.items():
        if k in cfg:
            cfg[k] = v
        elif k.startswith("_") or k in _IGNORED_KEYS:
            continue
        else:
            raise ValueError(f"CLIPTextModel config key {k!r} is not supported")
    _check_activation(cfg["hidden_act"])
    return cfg


class CLIPTextModel(nnx.Module):
    """CLIPTextModel(input_ids (B, T) int) -> last_hidden_state (B, T, hidden_size).

    attention: the (causal) self-attention's kernel (`layers.ATTENTION_CHOICES`; None:
    automatic per platform), a static attribute (part of every compiled program's cache key).
    """

    def __init__(self, config: dict, *, dtype=jnp.float32, param_dtype=jnp.float32, attention: str | None = None,
                 rngs: nnx.Rngs = None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        cfg = _text_config(config)
        self.hidden_size = cfg["hidden_size"]
        attention = self.attention = resolve_attention(attention)
        self.text_model = CLIPTextTransformer(cfg, attention=attention, dtype=dtype, param_dtype=param_dtype,
                                              rngs=rngs)

    def __call__(self, input_ids):
        return self.text_model(jnp.asarray(input_ids, jnp.int32))
