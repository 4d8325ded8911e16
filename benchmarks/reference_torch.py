"""PyTorch reference: TI2V-Zero run eagerly on diffusers modules, as the published code does.

The published implementation (github.com/merlresearch/TI2V-Zero) drives ModelScope's
modules one call at a time: a text pass and an empty-text pass of the U-Net one after
the other (batch 1 each), DDIM with DDPM inversion and resampling, and a PIXEL slide:
each new latent is decoded by the VAE, and all K-1 queue frames are encoded again
(frame by frame, posterior mean) before the next frame. `slide="latent"` slides the
latents instead (the cheaper variant, for comparison with ti2v-jax's latent slide).
Same math as ../shared/ALGORITHM.md; the noise comes from a torch.Generator, so the
output is not bit-comparable with ti2v-jax (timing only; parity is tested elsewhere).

`TunedTI2VZero` is the strongest PyTorch setup of the same algorithm we know to build from
the same diffusers modules and weights: the modules in half precision (no autocast), both
guidance halves in ONE batch-2 U-Net call, diffusers' SDPA attention (PyTorch picks its
flash kernel where the GPU, dtype and head width allow), the U-Net `torch.compile`d
(inductor), and the pixel slide with one encode per new frame (the VAE encodes frames one
by one, so the re-encoded queue equals the kept latents plus the new frame's: what ti2v-jax
does). The sampler arithmetic stays float32.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def alphas_cumprod(n=1000, beta_start=0.00085, beta_end=0.012):
    betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def ddim_timesteps(steps: int, n: int = 1000):
    stride = n // steps
    return [(steps - 1 - i) * stride + 1 for i in range(steps)]


class TorchTI2VZero:
    """unet: diffusers UNet3DConditionModel; vae: AutoencoderKL; both on `device`, eval mode."""

    def __init__(self, unet, vae, *, device, autocast_dtype=None, num_frames=16, scaling_factor=0.18215):
        self.unet, self.vae, self.device = unet, vae, torch.device(device)
        self.k = num_frames
        self.sf = scaling_factor
        self.abar = alphas_cumprod()
        self.autocast_dtype = autocast_dtype

    def _ctx(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- networks
    def eps(self, x, t, ctx):
        """x: (1, C, K, h, w). One U-Net call."""
        tt = torch.tensor([t], device=self.device, dtype=torch.long)
        return self.unet(x, tt, encoder_hidden_states=ctx).sample.float()

    def guided(self, x, t, text, empty, g):
        e_u = self.eps(x, t, empty)      # separate passes, as the published code runs them
        e_t = self.eps(x, t, text)
        return e_u + g * (e_t - e_u)

    def encode(self, frames):
        """frames (F, 3, H, W) in [-1, 1] -> latents (F, C, h, w), one frame at a time."""
        return torch.cat([self.vae.encode(f[None]).latent_dist.mean.float() for f in frames]) * self.sf

    def decode(self, z):
        return self.vae.decode(z / self.sf).sample.float()

    # -- sampler
    def _a(self, t):
        return float(self.abar[t])

    def ddim(self, x, eps, t, tn):
        a, ap = self._a(t), self._a(tn)
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        return ap ** 0.5 * x0 + (1 - ap) ** 0.5 * eps

    def q(self, x0, t, z):
        a = self._a(t)
        return a ** 0.5 * x0 + (1 - a) ** 0.5 * z

    def frame(self, s0, text, empty, *, steps=10, resample=4, g=9.0, gen=None):
        """s0: (K-1, C, h, w) clean latents -> the new frame's latent (C, h, w)."""
        k = self.k
        ts = ddim_timesteps(steps)
        tn_list = ts[1:] + [0]
        rn = lambda *s: torch.randn(*s, generator=gen, device=self.device)  # noqa: E731
        shape = (k,) + tuple(s0.shape[1:])
        # (1, C, K, h, w): diffusers' video layout
        x = self.q(s0[-1:], ts[0], rn(*shape)).permute(1, 0, 2, 3)[None]
        for t, tn in zip(ts, tn_list):
            noisy = self.q(s0, t, rn(*s0.shape)).permute(1, 0, 2, 3)[None]
            noisy_next = self.q(s0, tn, rn(*s0.shape)).permute(1, 0, 2, 3)[None]
            x[:, :, :k - 1] = noisy
            for _ in range(resample):
                x = self.ddim(x, self.guided(x, t, text, empty, g), t, tn)
                x[:, :, :k - 1] = noisy_next
                r = self._a(t) / self._a(tn)
                x = r ** 0.5 * x + (1 - r) ** 0.5 * rn(*x.shape)
            x = self.ddim(x, self.guided(x, t, text, empty, g), t, tn)
        return x[0, :, k - 1]

    @torch.no_grad()
    def video(self, image, text, empty, *, num_new_frames=15, steps=10, resample=4, g=9.0, slide="pixel",
              seed=0):
        """image (3, H, W) in [-1, 1] -> new frames (N, 3, H, W) float (unclamped decoder output)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        with self._ctx():
            queue = image[None].repeat(self.k - 1, 1, 1, 1)
            if slide == "latent":
                queue = self.encode(queue)
            out = []
            for _ in range(num_new_frames):
                if slide == "pixel":
                    z = self.frame(self.encode(queue), text, empty, steps=steps, resample=resample, g=g, gen=gen)
                    px = self.decode(z[None])
                    queue = torch.cat([queue[1:], px])
                    out.append(px[0])
                else:
                    z = self.frame(queue, text, empty, steps=steps, resample=resample, g=g, gen=gen)
                    queue = torch.cat([queue[1:], z[None]])
                    out.append(z)
            if slide == "latent":
                out = list(self.decode(torch.stack(out)))
        return torch.stack(out)

    @torch.no_grad()
    def unet_pair(self, x, t, text, empty):
        """The guidance pair as the published code runs it: two batch-1 passes."""
        with self._ctx():
            return self.guided(x, t, text, empty, 9.0)


class TunedTI2VZero(TorchTI2VZero):
    """The tuned peer (module docstring). unet, vae: diffusers modules already in `dtype` on
    `device`; `compile_mode`: torch.compile's mode for the U-Net (None: eager)."""

    def __init__(self, unet, vae, *, device, dtype=torch.float32, compile_mode=None, **kw):
        super().__init__(unet, vae, device=device, autocast_dtype=None, **kw)
        self.dtype = dtype
        self.compile_mode = compile_mode
        self.unet_fn = unet
        if compile_mode is not None:
            mode = None if compile_mode == "default" else compile_mode
            self.unet_fn = torch.compile(unet, mode=mode, dynamic=False)

    def _ctx(self):
        return torch.inference_mode()

    def eps_pair(self, x, t, text, empty):
        """x (1, C, K, h, w) float32 -> (eps_uncond, eps_text), one batch-2 U-Net call."""
        xx = torch.cat([x, x]).to(self.dtype)
        tt = torch.full((2,), t, device=self.device, dtype=torch.long)
        ctx = torch.cat([empty, text]).to(self.dtype)
        eps = self.unet_fn(xx, tt, encoder_hidden_states=ctx, return_dict=False)[0].float()
        return eps[:1], eps[1:]

    def guided(self, x, t, text, empty, g):
        e_u, e_t = self.eps_pair(x, t, text, empty)
        return e_u + g * (e_t - e_u)

    def encode(self, frames):
        """frames (F, 3, H, W) -> latents (F, C, h, w) float32, one batched call (the VAE encodes
        each frame on its own, so this is the published per-frame encode)."""
        return self.vae.encode(frames.to(self.dtype)).latent_dist.mean.float() * self.sf

    def decode(self, z):
        return self.vae.decode((z / self.sf).to(self.dtype)).sample.float()

    def next_frame(self, lat_queue, text, empty, *, slide="pixel", steps=10, resample=4, g=9.0, gen=None):
        """One new frame from the latent queue (K-1, C, h, w): returns (new latent queue, new
        frame or latent). The pixel slide decodes the new latent and encodes that frame once."""
        z = self.frame(lat_queue, text, empty, steps=steps, resample=resample, g=g, gen=gen)
        if slide == "pixel":
            px = self.decode(z[None])
            return torch.cat([lat_queue[1:], self.encode(px)]), px[0]
        return torch.cat([lat_queue[1:], z[None]]), z

    @torch.inference_mode()
    def video(self, image, text, empty, *, num_new_frames=15, steps=10, resample=4, g=9.0, slide="pixel",
              seed=0):
        gen = torch.Generator(device=self.device).manual_seed(seed)
        q = self.encode(image[None]).repeat(self.k - 1, 1, 1, 1)
        out = []
        for _ in range(num_new_frames):
            q, new = self.next_frame(q, text, empty, slide=slide, steps=steps, resample=resample, g=g, gen=gen)
            out.append(new)
        if slide == "latent":
            out = list(self.decode(torch.stack(out)))
        return torch.stack(out)

    @torch.inference_mode()
    def unet_pair(self, x, t, text, empty):
        return self.guided(x, t, text, empty, 9.0)
