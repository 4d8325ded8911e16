"""Samplers as pure, traceable functions of arrays (see ALGORITHM.md).

    guided = cfg_denoiser(denoise, context, uncond_context)        # guidance as a denoiser wrapper
    lat, px = ti2v_zero_sample(key, guided, encode, decode, frames, num_frames=K, num_new_frames=N,
                               timesteps=ddim_timesteps(10), guidance=9.0, resample=4)

Per-step settings (guidance, eta, resample) may be arrays of one value per step or per
item and step; `grid`/`sample_grid` run a grid of them in one program; `remat=True`
makes gradients through a whole video fit in memory.
"""

from .guidance import cfg_denoiser, guided_eps, shares_samples
from .schedule import (alphas_cumprod, betas, ddim_step, ddim_timesteps, item_keys, next_timesteps, push_back,
                       q_sample, state_dtype)
from .grid import grid, sample_grid
from .t2v import t2v_sample
from .ti2v_zero import (initial_latent, pad_queue, replacing_baseline_sample, slide_frame, ti2v_zero_frame,
                        ti2v_zero_sample)

__all__ = [
    "alphas_cumprod", "betas", "cfg_denoiser", "ddim_step", "ddim_timesteps", "grid", "guided_eps", "item_keys",
    "next_timesteps", "push_back", "q_sample", "sample_grid", "shares_samples", "state_dtype", "t2v_sample",
    "pad_queue", "replacing_baseline_sample", "slide_frame", "ti2v_zero_frame", "ti2v_zero_sample",
    "initial_latent",
]
