"""The two benchmark configurations, in one place.

small: the real ModelScope U-Net's structure (4 levels, 2 layers per block, every block
  type, 16 frames, 32x32 latents, 256x256 pixels) with channels scaled down, a small VAE
  (also 4 levels, so 8x) and a 2-layer CLIP text encoder: one new frame at S=10, R=4 takes
  a minute or two on a 2-core CPU.
full: ModelScope text-to-video-ms-1.7b's own configs (shipped as `ti2v_jax.MS17B_CONFIGS`),
  random weights. GPU only.
small_ca128: `small` with the cross-attention (and text encoder) 128 wide and a VAE of 2 layers
  per block: the other small config of the real structure issue 22's CPU figures were taken on.
tiny: the smallest config that takes every code path of the benchmarks (2 U-Net levels,
  16x16 latents, a 3-level VAE, 64x64 pixels): for dry runs of the GPU script on a CPU.
"""

from __future__ import annotations

import json

from ti2v_jax import MS17B_CONFIGS

CA_DOWN, DOWN, CA_UP, UP = "CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"

SMALL = {
    "unet": dict(_class_name="UNet3DConditionModel", act_fn="silu", attention_head_dim=32,
                 block_out_channels=[32, 64, 128, 128], cross_attention_dim=64,
                 down_block_types=[CA_DOWN, CA_DOWN, CA_DOWN, DOWN], up_block_types=[UP, CA_UP, CA_UP, CA_UP],
                 in_channels=4, out_channels=4, layers_per_block=2, norm_eps=1e-5, norm_num_groups=32,
                 sample_size=32),
    "vae": dict(_class_name="AutoencoderKL", act_fn="silu", block_out_channels=[32, 32, 64, 64],
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=16,
                sample_size=256, scaling_factor=0.18215),
    "text_encoder": dict(architectures=["CLIPTextModel"], model_type="clip_text_model", hidden_act="gelu",
                         hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2,
                         max_position_embeddings=77, vocab_size=49408, layer_norm_eps=1e-5,
                         bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=64,
                         attention_dropout=0.0, dropout=0.0, initializer_factor=1.0, initializer_range=0.02),
}


TINY = {
    "unet": dict(SMALL["unet"], attention_head_dim=8, block_out_channels=[16, 32], cross_attention_dim=32,
                 down_block_types=[CA_DOWN, DOWN], up_block_types=[UP, CA_UP], layers_per_block=1,
                 norm_num_groups=8, sample_size=16),
    "vae": dict(SMALL["vae"], block_out_channels=[16, 16, 32], down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, norm_num_groups=8, sample_size=64),
    "text_encoder": dict(SMALL["text_encoder"], hidden_size=32, intermediate_size=64, num_attention_heads=2,
                         num_hidden_layers=1, projection_dim=32),
}
SMALL_CA128 = {
    "unet": dict(SMALL["unet"], cross_attention_dim=128),
    "vae": dict(SMALL["vae"], layers_per_block=2),
    "text_encoder": dict(SMALL["text_encoder"], hidden_size=128, intermediate_size=512, projection_dim=128),
}
NAMES = ("tiny", "small", "small_ca128", "full")


def _full() -> dict:
    return {name: json.loads((MS17B_CONFIGS / f"{name}.json").read_text()) for name in ("unet", "vae", "text_encoder")}


def scheduler() -> dict:
    return json.loads((MS17B_CONFIGS / "scheduler.json").read_text())


# Model FLOPs of one 16-frame pass, batch 1, 32x32 latents (torch FlopCounter, PERF-NOTES.md).
FLOPS_PER_PASS = {"small": 89e9, "full": 4.89e12}


def get(name: str) -> dict:
    """{component: config dict} for a name of `NAMES`."""
    if name in (built := {"tiny": TINY, "small": SMALL, "small_ca128": SMALL_CA128}):
        return json.loads(json.dumps(built[name]))
    if name == "full":
        return _full()
    raise ValueError(f"unknown config {name!r}; choose one of {', '.join(NAMES)}")
