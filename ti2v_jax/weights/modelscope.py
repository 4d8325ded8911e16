"""The original ModelScope text-to-video release -> a converted ti2v-jax directory.

The release (the layout TI2V-Zero's published code loads) is one directory:

    configuration.json              model.model_cfg: the UNetSD hyper-parameters
    text2video_pytorch_model.pth    UNetSD state dict (input_blocks / middle_block / output_blocks)
    VQGAN_autoencoder.pth           {"state_dict": ...}, a Stable Diffusion checkpoint whose
                                    `first_stage_model.*` is the LDM autoencoder
    open_clip_pytorch_model.bin     the whole OpenCLIP ViT-H/14 (text tower used up to its
                                    penultimate block, then ln_final)

Each network is mapped onto our diffusers/transformers-named Flax models by regex
renames (`mapping.rename_keys`) plus the one fused-tensor split OpenCLIP needs, then
filled strictly by `mapping.fill_params`. Tensors that ModelScope itself never uses
(the visual tower, `text_projection`, `logit_scale`, the last text block, the rest of
the Stable Diffusion checkpoint) are dropped by name and reported as skipped;
anything else left over is an error. `convert.convert_components` (the one in-memory
conversion, for both layouts) calls `convert_components` here; `convert.convert_checkpoint`
writes the result in the layout of `checkpoint.py`. This module does not import `convert`.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError
from ti2v_jax.weights import checkpoint as ckpt
from ti2v_jax.weights import layout, mapping
from ti2v_jax.weights.components import COMPONENTS
from ti2v_jax.weights.mapping import ConvertedComponent

CONFIGURATION = layout.CONFIGURATION
# model.model_args keys naming the weight files, with the release's file names.
DEFAULT_FILES = {"unet": ("ckpt_unet", "text2video_pytorch_model.pth"),
                 "vae": ("ckpt_autoencoder", "VQGAN_autoencoder.pth"),
                 "text_encoder": ("ckpt_clip", "open_clip_pytorch_model.bin")}
COMPONENT_NAMES = ("unet", "vae", "text_encoder")

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "clip_tokenizer"
BPE_FILE = ASSETS / "bpe_simple_vocab_16e6.txt.gz"

# ModelScope's pipeline constants (text_to_video_synthesis_model.py): the autoencoder's
# latent scale, and its DDIM schedule ('linear_sd' betas, 1000 steps).
SCALING_FACTOR = 0.18215
SAMPLE_SIZE = 256  # the LDM ddconfig "resolution"


def is_modelscope(directory) -> bool:
    """True for an original ModelScope release directory (a configuration.json with model.model_cfg)."""
    return layout.modelscope_configuration(directory) is not None


def read_configuration(directory) -> tuple[dict, dict]:
    """(model_cfg, model_args) of `directory/configuration.json`; of a `layout.CheckpointFolder`, from
    the configuration it parsed."""
    path = layout.folder_path(directory) / CONFIGURATION
    configuration = directory.configuration if isinstance(directory, layout.CheckpointFolder) else None
    if configuration is None:
        configuration = layout.read_json(path, "ModelScope configuration")
    model = configuration.get("model", {})
    if not isinstance(model, dict) or not isinstance(model.get("model_cfg"), dict):
        raise CheckpointError(f"{path} has no model.model_cfg object")
    return dict(model["model_cfg"]), dict(model.get("model_args", {}))


def weight_files(directory, model_args: dict) -> dict[str, Path]:
    """{component: weights file}, as model_args names them (the release's names by default)."""
    out = {}
    for name, (key, default) in DEFAULT_FILES.items():
        path = Path(directory) / model_args.get(key, default)
        if not path.is_file():
            raise CheckpointNotFoundError(f"{name}: weights file {path} not found (configuration.json "
                                          f"model_args.{key})")
        out[name] = path
    return out


# ---- U-Net: UNetSD -> diffusers UNet3DConditionModel -------------------------------

def _flag(v) -> bool:
    return v is True or (isinstance(v, str) and v.lower() == "true")


_REQUIRED = object()


def _number(model_cfg: dict, key: str, default=_REQUIRED, kind=int):
    """model_cfg[key] as `kind`; a missing field or one of the wrong kind is a one-line CheckpointError."""
    v = model_cfg.get(key, default)
    if v is _REQUIRED:
        raise CheckpointError(f"configuration.json model_cfg has no {key!r}; it is not a complete ModelScope "
                              f"text-to-video configuration")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
        need = "an integer" if kind is int else "a number"
        raise CheckpointError(f"configuration.json model_cfg.{key}={v!r} is not {need}")
    return kind(v)


def _mults(model_cfg: dict) -> list[int]:
    mult = model_cfg.get("unet_dim_mult", _REQUIRED)
    if mult is _REQUIRED:
        _number(model_cfg, "unet_dim_mult")  # the one-line "has no" error
    if not isinstance(mult, list) or not mult:
        raise CheckpointError(f"configuration.json model_cfg.unet_dim_mult={mult!r} is not a list of integers")
    return [_number({"unet_dim_mult": m}, "unet_dim_mult") for m in mult]


def unet_config(model_cfg: dict) -> dict:
    """configuration.json model_cfg -> diffusers UNet3DConditionModel config.

    Raises CheckpointError (one line naming the field) for a missing field, one of the wrong
    kind, or UNetSD settings diffusers' architecture cannot express.
    """
    dim, mult = _number(model_cfg, "unet_dim"), _mults(model_cfg)
    head_dim = _number(model_cfg, "unet_head_dim", 64)
    num_heads = model_cfg.get("unet_num_heads") or dim // 32
    context_dim = _number(model_cfg, "unet_context_dim")
    attn = _attention_levels(model_cfg)

    def bad(key, why):
        raise CheckpointError(f"configuration.json model_cfg.{key}={model_cfg.get(key)!r}: {why}")

    if not _flag(model_cfg.get("temporal_attention", True)):
        bad("temporal_attention", "UNet3DConditionModel always has temporal attention")
    if num_heads != 8:
        bad("unet_num_heads", "UNet3DConditionModel's transformer_in has 8 heads (hard-coded in diffusers)")
    if any(attn) and context_dim != 1024:
        # UNetSD builds its decoder cross-attention with context_dim=1024 whatever the config says.
        bad("unet_context_dim", "UNetSD's decoder cross-attention is hard-coded to 1024")
    for key in ("use_fps_condition", "use_image_dataset", "use_sim_mask"):
        if _flag(model_cfg.get(key, False)):
            bad(key, "not supported")
    if _number(model_cfg, "unet_res_blocks", 2) < 1:
        bad("unet_res_blocks", "at least 1")
    for m in mult:
        if (dim * m) % 32 or (dim * m) % head_dim:
            bad("unet_dim_mult", f"channels {dim * m} must be multiples of 32 (UNetSD's GroupNorm) and of "
                                 f"unet_head_dim={head_dim}")
    return {
        "_class_name": "UNet3DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "block_out_channels": [dim * m for m in mult],
        "cross_attention_dim": context_dim,
        "down_block_types": ["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attn],
        "in_channels": _number(model_cfg, "unet_in_dim"),
        "layers_per_block": _number(model_cfg, "unet_res_blocks"),
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "out_channels": _number(model_cfg, "unet_out_dim"),
        "sample_size": SAMPLE_SIZE // 8,
        "up_block_types": ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attn)],
    }


def _attention_levels(model_cfg: dict) -> list[bool]:
    """Which resolution levels have attention: UNetSD's `scale in attn_scales`, scale = 1/2**level."""
    scales = [float(s) for s in model_cfg.get("unet_attn_scales", [1 / 2, 1 / 4, 1 / 8])]
    return [1.0 / 2 ** i in scales for i in range(len(_mults(model_cfg)))]


def unet_renames(config: dict) -> list[tuple[str, str]]:
    """Regex rules, UNetSD names -> diffusers UNet3DConditionModel names, for this config."""
    levels = len(config["block_out_channels"])
    nres = config["layers_per_block"]
    down_attn = [t == "CrossAttnDownBlock3D" for t in config["down_block_types"]]
    up_attn = [t == "CrossAttnUpBlock3D" for t in config["up_block_types"]]
    rules = [(r"^time_embed\.0\.", "time_embedding.linear_1."), (r"^time_embed\.2\.", "time_embedding.linear_2."),
             (r"^input_blocks\.0\.0\.", "conv_in."), (r"^input_blocks\.0\.1\.", "transformer_in."),
             (r"^out\.0\.", "conv_norm_out."), (r"^out\.2\.", "conv_out.")]
    # input_blocks.k = [ResBlock, SpatialTransformer?, TemporalTransformer?] or a Downsample.
    k = 1
    for i in range(levels):
        for j in range(nres):
            sub = ["resnets", "attentions", "temp_attentions"] if down_attn[i] else ["resnets"]
            rules += [(rf"^input_blocks\.{k}\.{n}\.", f"down_blocks.{i}.{s}.{j}.") for n, s in enumerate(sub)]
            k += 1
            if i != levels - 1 and j == nres - 1:
                rules.append((rf"^input_blocks\.{k}\.op\.", f"down_blocks.{i}.downsamplers.0.conv."))
                k += 1
    rules += [(r"^middle_block\.0\.", "mid_block.resnets.0."), (r"^middle_block\.1\.", "mid_block.attentions.0."),
              (r"^middle_block\.2\.", "mid_block.temp_attentions.0."), (r"^middle_block\.3\.", "mid_block.resnets.1.")]
    # output_blocks.k = [ResBlock, SpatialTransformer?, TemporalTransformer?, Upsample?].
    k = 0
    for i in range(levels):
        sub = ["resnets", "attentions", "temp_attentions"] if up_attn[i] else ["resnets"]
        for j in range(nres + 1):
            rules += [(rf"^output_blocks\.{k}\.{n}\.", f"up_blocks.{i}.{s}.{j}.") for n, s in enumerate(sub)]
            if i != levels - 1 and j == nres:
                rules.append((rf"^output_blocks\.{k}\.{len(sub)}\.conv\.", f"up_blocks.{i}.upsamplers.0.conv."))
            k += 1
    # Inside a ResBlock: its temporal conv becomes the block's temp_convs entry (same inner names).
    rules += [(r"\.resnets\.(\d+)\.temopral_conv\.", r".temp_convs.\1."),
              (r"\.resnets\.(\d+)\.in_layers\.0\.", r".resnets.\1.norm1."),
              (r"\.resnets\.(\d+)\.in_layers\.2\.", r".resnets.\1.conv1."),
              (r"\.resnets\.(\d+)\.emb_layers\.1\.", r".resnets.\1.time_emb_proj."),
              (r"\.resnets\.(\d+)\.out_layers\.0\.", r".resnets.\1.norm2."),
              (r"\.resnets\.(\d+)\.out_layers\.3\.", r".resnets.\1.conv2."),
              (r"\.resnets\.(\d+)\.skip_connection\.", r".resnets.\1.conv_shortcut.")]
    # SpatialTransformer / TemporalTransformer already use diffusers' inner names
    # (norm, proj_in, transformer_blocks.0.attn1.to_q, ff.net.0.proj, proj_out); the
    # temporal ones are Conv1d(k=1), which `mapping.to_flax` squeezes to Linear.
    return rules


def unet_state(raw: dict, config: dict) -> tuple[dict, list]:
    """UNetSD state dict -> (diffusers-named state dict, skipped keys). Nothing is skipped."""
    return mapping.rename_keys(raw, unet_renames(config)), []


# ---- VAE: LDM AutoencoderKL -> diffusers AutoencoderKL --------------------------

_AE_PREFIX = "first_stage_model."


def _count(state: dict, pattern: str) -> int:
    found = {m.group(1) for k in state for m in [re.match(pattern, k)] if m}
    return len(found)


def vae_split(raw: dict) -> tuple[dict, list]:
    """(autoencoder state without prefix, skipped keys) of a VQGAN_autoencoder.pth state dict.

    As ModelScope's `AutoencoderKL.init_from_ckpt`: keys holding `first_stage_model.`
    are the autoencoder (the rest of the Stable Diffusion checkpoint is skipped). A
    bare autoencoder state dict (no such key) is taken whole.
    """
    if not any(_AE_PREFIX in k for k in raw):
        return dict(raw), []
    ae = {k.split(_AE_PREFIX)[-1]: v for k, v in raw.items() if _AE_PREFIX in k}
    return ae, sorted(k for k in raw if _AE_PREFIX not in k)


def vae_config(state: dict) -> dict:
    """The diffusers AutoencoderKL config of an LDM autoencoder state dict, from its shapes.

    ModelScope hard-codes its ddconfig (ch=128, ch_mult=[1,2,4,4], 2 res blocks, no
    attention but the mid-blocks', z_channels=embed_dim=4, resolution 256); reading it
    from the shapes gives exactly that for the release, and works for other sizes.
    """
    levels = _count(state, r"^encoder\.down\.(\d+)\.")
    if levels == 0 or "encoder.conv_in.weight" not in state:
        raise mapping.ConversionError("vae: not an LDM autoencoder state dict (no encoder.down.N / encoder.conv_in)")
    if any(re.match(r"^(encoder\.down|decoder\.up)\.\d+\.attn\.", k) for k in state):
        raise CheckpointError("vae: attention inside the down/up levels (attn_resolutions) is not supported by "
                         "diffusers' AutoencoderKL")
    z = state["decoder.conv_in.weight"].shape[1]
    embed = state["post_quant_conv.weight"].shape[1]
    if z != embed:
        raise CheckpointError(f"vae: z_channels={z} != embed_dim={embed}; diffusers' AutoencoderKL needs them equal")
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(levels)],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "latent_channels": int(embed),
        "layers_per_block": _count(state, r"^encoder\.down\.0\.block\.(\d+)\."),
        "norm_num_groups": 32,
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "sample_size": SAMPLE_SIZE,
        "scaling_factor": SCALING_FACTOR,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def vae_renames(levels: int) -> list[tuple[str, str]]:
    """Regex rules, LDM autoencoder names -> diffusers AutoencoderKL names."""
    rules = [(r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
             (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder.down_blocks.\1.downsamplers.0.conv.")]
    # The decoder's `up` list is stored lowest resolution last; diffusers' up_blocks first.
    for i in range(levels):
        rules += [(rf"^decoder\.up\.{i}\.block\.(\d+)\.", rf"decoder.up_blocks.{levels - 1 - i}.resnets.\1."),
                  (rf"^decoder\.up\.{i}\.upsample\.conv\.", f"decoder.up_blocks.{levels - 1 - i}.upsamplers.0.conv.")]
    rules += [(r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
              (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
              (r"\.attentions\.0\.norm\.", ".attentions.0.group_norm."),
              (r"\.attentions\.0\.(q|k|v)\.", r".attentions.0.to_\1."),
              (r"\.attentions\.0\.proj_out\.", ".attentions.0.to_out.0."),  # 1x1 convs -> Linear, by to_flax
              (r"\.nin_shortcut\.", ".conv_shortcut."),
              (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.")]
    return rules


def vae_state(raw: dict) -> tuple[dict, list, dict]:
    """VQGAN_autoencoder.pth state dict -> (diffusers-named state, skipped keys, config)."""
    ae, skipped = vae_split(raw)
    config = vae_config(ae)
    return mapping.rename_keys(ae, vae_renames(len(config["block_out_channels"]))), skipped, config


# ---- text encoder: OpenCLIP -> transformers CLIPTextModel (penultimate layer) -----

def text_config(raw: dict) -> dict:
    """transformers CLIPTextModel config for the OpenCLIP text tower, minus its last block.

    Heads are width // 64: every OpenCLIP text tower (ViT-H/14: 1024 wide, 16 heads)
    uses 64-wide heads, and the shapes cannot tell. The other values mirror the
    text_encoder/config.json of the diffusers release of the same model.
    """
    vocab, width = raw["token_embedding.weight"].shape
    layers = _count(raw, r"^transformer\.resblocks\.(\d+)\.")
    if layers < 2:
        raise mapping.ConversionError(f"text_encoder: {layers} text transformer blocks; need at least 2 "
                                      "(the penultimate block's output is used)")
    if width % 64:
        raise CheckpointError(f"text_encoder: width {width} is not a multiple of OpenCLIP's head width 64")
    return {
        "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
        "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": int(width), "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": int(raw["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "layer_norm_eps": 1e-5, "max_position_embeddings": int(raw["positional_embedding"].shape[0]),
        "model_type": "clip_text_model", "num_attention_heads": int(width) // 64,
        "num_hidden_layers": layers - 1, "pad_token_id": 1, "projection_dim": 512,
        "vocab_size": int(vocab),
    }


def text_skip_patterns(num_blocks: int) -> list[str]:
    """What ModelScope's FrozenOpenCLIPEmbedder(layer='penultimate') never uses."""
    return [r"^visual\.", r"^text_projection$", r"^logit_scale$", r"^attn_mask$",
            rf"^transformer\.resblocks\.{num_blocks - 1}\."]


def split_fused(state: dict, pattern: str, parts: tuple[str, ...]) -> dict:
    """Split each tensor whose key matches `pattern` into len(parts) equal slices along axis 0.

    The key's match is replaced by each part in turn (a `re` replacement string), e.g.
    `attn.in_proj_weight` (3D, D) -> `attn.q_proj.weight`, `attn.k_proj.weight`, ...
    """
    pat, out = re.compile(pattern), {}
    for k, v in state.items():
        if not pat.search(k):
            out[k] = v
            continue
        if v.shape[0] % len(parts):
            raise mapping.ConversionError(f"{k}: {v.shape[0]} rows do not split into {len(parts)} equal parts")
        for part, piece in zip(parts, np.split(np.asarray(v), len(parts), axis=0)):
            out[pat.sub(part, k)] = piece
    return out


TEXT_RENAMES = [
    (r"^token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^transformer\.resblocks\.(\d+)\.attn\.", r"text_model.encoder.layers.\1.self_attn."),
    (r"^transformer\.resblocks\.(\d+)\.ln_(\d)\.", r"text_model.encoder.layers.\1.layer_norm\2."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"text_model.encoder.layers.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"text_model.encoder.layers.\1.mlp.fc2."),
    (r"^ln_final\.", "text_model.final_layer_norm."),
]


def text_state(raw: dict) -> tuple[dict, list, dict]:
    """open_clip_pytorch_model.bin state dict -> (transformers-named state, skipped keys, config)."""
    config = text_config(raw)
    skip = [re.compile(p) for p in text_skip_patterns(config["num_hidden_layers"] + 1)]
    skipped = sorted(k for k in raw if any(p.search(k) for p in skip))
    used = {k: v for k, v in raw.items() if not any(p.search(k) for p in skip)}
    used = split_fused(used, r"\.attn\.in_proj_weight$", (".attn.q_proj.weight", ".attn.k_proj.weight",
                                                          ".attn.v_proj.weight"))
    used = split_fused(used, r"\.attn\.in_proj_bias$", (".attn.q_proj.bias", ".attn.k_proj.bias",
                                                        ".attn.v_proj.bias"))
    return mapping.rename_keys(used, TEXT_RENAMES), skipped, config


# ---- scheduler and tokenizer -----------------------------------------------------

def scheduler_config(model_cfg: dict) -> dict:
    """diffusers DDIMScheduler config equal to ModelScope's GaussianDiffusion('linear_sd' betas)."""
    prediction = {"eps": "epsilon", "v": "v_prediction"}.get(model_cfg.get("mean_type", "eps"))
    if prediction is None:
        raise CheckpointError(f"configuration.json model_cfg.mean_type={model_cfg.get('mean_type')!r}: "
                         "only 'eps' and 'v' are supported")
    return {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": int(model_cfg.get("num_timesteps",
                                                                                                   1000)),
            "prediction_type": prediction, "set_alpha_to_one": False, "steps_offset": 1, "thresholding": False}


def bpe_vocab_and_merges(bpe_path=BPE_FILE) -> tuple[dict, list]:
    """open_clip's SimpleTokenizer vocabulary (49408 ids) and merges, from its .txt.gz."""
    from ti2v_jax.tokenizer import clip_bpe_vocab

    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    return clip_bpe_vocab(merges), merges


def write_clip_tokenizer(directory, bpe_path=BPE_FILE) -> Path:
    """The full CLIP BPE tokenizer as transformers' CLIPTokenizer files, padding as open_clip does.

    open_clip pads with id 0, which is '!' in this vocabulary, to 77 tokens; its
    <start_of_text>/<end_of_text> are ids 49406/49407, here under CLIP's usual names.
    """
    from ti2v_jax.tokenizer import write_clip_bpe_tokenizer

    _, merges = bpe_vocab_and_merges(bpe_path)
    return Path(write_clip_bpe_tokenizer(directory, merges))


# ---- reading and converting --------------------------------------------------------

def read_pth(path, keep=None) -> dict[str, np.ndarray]:
    """A .pth/.bin state dict as numpy, only the keys `keep(key)` accepts (the others as
    `_Unread` placeholders: memory-mapped, the tensors ModelScope never uses, the visual
    tower or the rest of a Stable Diffusion checkpoint, are not read at all)."""
    from ti2v_jax.weights.torch_io import load_torch_state, torch_to_numpy

    return {k: torch_to_numpy(v) if keep is None or keep(k) else _Unread(tuple(v.shape))
            for k, v in load_torch_state(path).items()}


class _Unread:
    """Placeholder for a tensor we skip: its name and shape are kept, its data never read."""

    def __init__(self, shape):
        self.shape = shape


def _text_keep(key: str) -> bool:
    return not key.startswith("visual.")


def _vae_keep(key: str) -> bool:
    return _AE_PREFIX in key or not key.startswith(("model.", "cond_stage_model.", "model_ema."))


def _original_names(raw: dict, state: dict) -> dict[str, str]:
    """{renamed key: checkpoint key}. Renaming keeps the array objects and splitting makes
    views of them, so each tensor is traced back by identity (or its view's base)."""
    by_id = {id(v): k for k, v in raw.items()}
    out = {}
    for k, v in state.items():
        orig = by_id.get(id(v)) or by_id.get(id(getattr(v, "base", None)))
        if orig is not None and orig != k:
            out[k] = orig
    return out


def _fill(name, config, state, dtype, weights_file, origin=None, attention=None):
    """(params, ignored keys, the abstract model they fit: built in `dtype` with `attention`)."""
    spec = COMPONENTS[name]
    np_dtype = ckpt.DTYPES[ckpt.dtype_name(dtype)]
    try:
        abstract = spec.abstract(config, dtype=np_dtype, param_dtype=np_dtype, attention=attention)
    except ValueError as e:
        raise mapping.ConversionError(f"{name}: {e}") from e
    # Our diffusers-named state goes through the model's own rules too (they are no-ops on
    # current diffusers names), exactly as the diffusers path does.
    state = mapping.rename_keys(state, spec.renames)
    try:
        params, ignored = mapping.fill_params(ckpt.param_shapes(abstract), state, ignore=spec.ignore,
                                              dtype=np_dtype, component=f"{name} ({weights_file})")
        return params, ignored, abstract
    except mapping.ConversionError as e:
        # Name the offending tensors as the original checkpoint has them, too.
        lines = [f"{line}   [{weights_file}: {origin[key]}]" if (key := line.strip().split(":")[0]) in (origin or {})
                 else line for line in str(e).split("\n")]
        raise mapping.ConversionError("\n".join(lines)) from None


def convert_components(src, dtype="float32", components=COMPONENT_NAMES, *, attention=None, configuration=None):
    """{name: mapping.ConvertedComponent} from an original ModelScope directory, nothing written.

    Each one's `model` is the abstract network in `dtype`, built with `attention`.
    configuration: (model_cfg, model_args) as `read_configuration` gave them (read here if None).
    """
    model_cfg, model_args = configuration or read_configuration(src)
    src = layout.folder_path(src)
    files = weight_files(src, model_args)
    out = {}
    for name in components:
        path = files[name]
        if name == "unet":
            config = unet_config(model_cfg)
            raw = read_pth(path)
            state, skipped = unet_state(raw, config)
        elif name == "vae":
            raw = read_pth(path, keep=_vae_keep)
            state, skipped, config = vae_state(raw)
        elif name == "text_encoder":
            raw = read_pth(path, keep=_text_keep)
            state, skipped, config = text_state(raw)
        else:
            raise CheckpointError(f"unknown component {name!r}; known: {COMPONENT_NAMES}")
        origin = _original_names(raw, state)
        unread = [origin.get(k, k) for k, v in state.items() if isinstance(v, _Unread)]
        if unread:
            raise mapping.ConversionError(f"{name} ({path.name}): unexpected tensors: {unread}")
        params, ignored, abstract = _fill(name, config, state, dtype, path.name, origin, attention)
        out[name] = ConvertedComponent(name, config, params, sorted(skipped + ignored), path.name, abstract)
        del state, raw
    return out
