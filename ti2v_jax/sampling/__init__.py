"""Samplers as pure, traceable functions of arrays (see ALGORITHM.md)."""

from .schedule import (alphas_cumprod, betas, ddim_step, ddim_timesteps, guided_eps, item_keys,
                       next_timesteps, push_back, q_sample, shares_samples)
from .t2v import t2v_sample
from .ti2v_zero import (initial_latent, pad_queue, replacing_baseline_sample, slide_frame, ti2v_zero_frame,
                        ti2v_zero_sample)

__all__ = [
    "alphas_cumprod", "betas", "ddim_step", "ddim_timesteps", "guided_eps", "item_keys",
    "next_timesteps", "push_back", "q_sample", "shares_samples", "t2v_sample", "pad_queue",
    "replacing_baseline_sample", "slide_frame", "ti2v_zero_frame", "ti2v_zero_sample", "initial_latent",
]
