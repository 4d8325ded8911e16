"""TI2VZeroPipeline: image + text -> video with a frozen text-to-video model.

    pipe = TI2VZeroPipeline.from_pretrained("ckpt/")            # converted or diffusers layout
    video = pipe("cat.png", "a cat running")                    # uint8 (16, 256, 256, 3)
    videos = pipe(["a.png", "b.png"], ["a dog", "a car"])       # uint8 (2, 16, 256, 256, 3)
    clip = pipe.text_to_video("a panda surfing")                # uint8 (16, 256, 256, 3)

All heavy work is one jitted program per shape/setting: text encoding, then the
sampler (`lax.scan` over new frames and DDIM steps) with the VAE inside it.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax import io, loading, programs
from ti2v_jax import parallel as par
from ti2v_jax.sampling import schedule
from ti2v_jax.tokenizer import tokenize
from ti2v_jax.xla_options import jit

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default_model"
DEFAULT_NUM_FRAMES = 16  # ModelScope's K
DEFAULT_NUM_NEW_FRAMES = 15  # the published demo: a 16-frame video
SLIDES = ("pixel", "latent")

def resolve_model(path_or_repo_id) -> Path:
    """A local checkpoint directory for `path_or_repo_id` (None: the shipped default model)."""
    if path_or_repo_id is None:
        if (DEFAULT_MODEL / "model_index.json").is_file():
            return DEFAULT_MODEL
        raise FileNotFoundError("no --model given and no default model is shipped in this install "
                                f"({DEFAULT_MODEL}); pass a checkpoint directory")
    p = Path(path_or_repo_id)
    if p.exists():
        if not p.is_dir():
            raise NotADirectoryError(f"model {p} is a file; expected a checkpoint directory")
        return p
    s = str(path_or_repo_id)
    looks_like_repo = s.count("/") == 1 and not s.startswith((".", "/", "~")) and " " not in s
    if not looks_like_repo:
        raise FileNotFoundError(f"model directory {p} does not exist")
    how = ("download or copy the checkpoint elsewhere, then run `ti2v-jax convert LOCAL_DIR OUT_DIR` "
           "and pass --model OUT_DIR")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise FileNotFoundError(f"{s!r} is not a local directory and the hub is offline (HF_HUB_OFFLINE); {how}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - depends on the install
        raise FileNotFoundError(f"{s!r} is not a local directory and huggingface_hub is not installed; {how}") from e
    try:
        return Path(snapshot_download(s, etag_timeout=10))
    except Exception as e:  # network errors come in many types
        raise FileNotFoundError(f"{s!r} is not a local directory and could not be downloaded from the hub "
                                f"({type(e).__name__}: {e}); {how}") from e


def _load_any(directory: Path, dtype) -> loading.Components:
    from ti2v_jax.weights import modelscope

    if loading.is_converted(directory) or loading.is_diffusers(directory):
        if not loading.is_converted(directory):
            print(f"ti2v-jax: {directory} is a diffusers checkpoint; converting it in memory "
                  f"(run `ti2v-jax convert` once to skip this)", file=sys.stderr)
        return loading.load(directory, dtype=dtype)
    if modelscope.is_modelscope(directory):
        print(f"ti2v-jax: {directory} is an original ModelScope checkpoint; converting it "
              f"(run `ti2v-jax convert` once to skip this)", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "converted"
            modelscope.convert_modelscope(directory, dst, dtype=jnp.dtype(dtype).name)
            return loading.load(dst, dtype=dtype)
    raise ValueError(f"{directory} is not a checkpoint directory: no model_index.json (converted or diffusers "
                     f"layout) and no configuration.json (original ModelScope layout)")


def _check_settings(*, num_new_frames=1, num_inference_steps=1, resample_iters=0, guidance_scale=1.0,
                    eta=0.0, slide="pixel", num_frames=2):
    def need(ok, msg):
        if not ok:
            raise ValueError(msg)
    need(isinstance(num_new_frames, (int, np.integer)) and num_new_frames >= 1,
         f"num_new_frames must be an integer >= 1, got {num_new_frames!r}")
    need(isinstance(num_inference_steps, (int, np.integer)) and 1 <= num_inference_steps <= 1000,
         f"num_inference_steps must be an integer in [1, 1000], got {num_inference_steps!r}")
    need(isinstance(resample_iters, (int, np.integer)) and resample_iters >= 0,
         f"resample_iters must be an integer >= 0, got {resample_iters!r}")
    need(guidance_scale >= 0, f"guidance_scale must be >= 0, got {guidance_scale!r}")
    need(eta >= 0, f"eta must be >= 0, got {eta!r}")
    need(slide in SLIDES, f"slide must be one of {SLIDES}, got {slide!r}")
    need(num_frames >= 2, f"num_frames must be >= 2, got {num_frames}")


class TI2VZeroPipeline:
    """TI2V-Zero over loaded components (see `ti2v_jax.loading.Components`)."""

    def __init__(self, components: loading.Components, *, num_frames: int = DEFAULT_NUM_FRAMES,
                 dtype=jnp.float32, name: str = "", default_num_new_frames: int = DEFAULT_NUM_NEW_FRAMES):
        self.components = components
        self.num_frames = int(num_frames)
        self.default_num_new_frames = int(default_num_new_frames)
        self.dtype = jnp.dtype(dtype)
        self.name = name
        self.params = components.params
        ucfg, vcfg = components.configs["unet"], components.configs["vae"]
        width = components.configs.get("text_encoder", {}).get("hidden_size")
        if width is not None and ucfg.get("cross_attention_dim", width) != width:
            raise ValueError(f"the checkpoint's parts do not fit: the U-Net attends to {ucfg['cross_attention_dim']}-wide "
                             f"text contexts but the text encoder's hidden_size is {width}")
        self.vae_scale = 2 ** (len(vcfg["block_out_channels"]) - 1)
        self.latent_channels = int(ucfg.get("in_channels", 4))
        sample = ucfg.get("sample_size", 32)
        sample = sample if isinstance(sample, (list, tuple)) else (sample, sample)
        self.default_size = (int(sample[0]) * self.vae_scale, int(sample[1]) * self.vae_scale)
        sched = components.scheduler_config or {}
        self.abar = schedule.alphas_cumprod(
            int(sched.get("num_train_timesteps", schedule.NUM_TRAIN_TIMESTEPS)),
            float(sched.get("beta_start", schedule.BETA_START)),
            float(sched.get("beta_end", schedule.BETA_END)))
        self._encode_text = jit(components.text_encode)
        self._spec = programs.ProgramSpec.get(components, self.num_frames, self.dtype, self.abar)

    @classmethod
    def from_pretrained(cls, path_or_repo_id=None, *, dtype="float32", num_frames: int | None = None):
        """Load a converted, diffusers-layout (converted on the fly) or original ModelScope
        directory, a hub repo id (online only), or with None the shipped default model."""
        directory = resolve_model(path_or_repo_id)
        dtype = jnp.dtype(dtype)
        comps = _load_any(directory, dtype)
        index = json.loads((directory / "model_index.json").read_text()) \
            if (directory / "model_index.json").is_file() else {}
        k = num_frames or int(index.get("num_frames", DEFAULT_NUM_FRAMES))
        n = int(index.get("num_new_frames", DEFAULT_NUM_NEW_FRAMES))  # a checkpoint may recommend its own N
        return cls(comps, num_frames=k, dtype=dtype, name=str(path_or_repo_id or "default"), default_num_new_frames=n)

    # ------------------------------------------------------------------ helpers

    def _size(self, height, width):
        h = height or self.default_size[0]
        w = width or self.default_size[1]
        if h % self.vae_scale or w % self.vae_scale:
            raise ValueError(f"height and width must be multiples of {self.vae_scale}, got {h}x{w}")
        return h, w

    def contexts(self, prompts):
        """(text, empty-text) contexts for a list of prompts, each (B, 77, D)."""
        ids = tokenize(self.components.tokenizer, list(prompts) + [""])
        ctx = self._encode_text(self.params["text_encoder"], jnp.asarray(ids)).astype(self.dtype)
        text, empty = ctx[:-1], ctx[-1:]
        return text, jnp.broadcast_to(empty, text.shape)

    def _seeds(self, seed, n):
        if isinstance(seed, (list, tuple, np.ndarray)):
            if len(seed) != n:
                raise ValueError(f"got {len(seed)} seeds for a batch of {n}")
            return [int(s) for s in seed]
        return [int(seed) + i for i in range(n)]

    def _run(self, program, settings: dict, args, parallel_mode):
        # A partial of (program, spec, hashable settings): `parallel` keys its cache of compiled
        # programs on exactly that, and equal pipelines share one spec, so equal settings and
        # shapes never recompile, even across `from_pretrained` calls.
        fn = functools.partial(program, self._spec, **settings)
        return par.run_batched(fn, args, replicated=self.params, mode=parallel_mode)

    # ------------------------------------------------------------------ public API

    def __call__(self, image, prompt, *, num_new_frames: int | None = None, num_inference_steps: int = 10,
                 resample_iters: int = 4, guidance_scale: float = 9.0, eta: float = 0.0,
                 ddpm_inversion: bool = True, slide: str = "pixel", seed=0, height=None, width=None,
                 baseline: bool = False, parallel: str = "none", progress: bool = False,
                 given_frames_as_video: bool = False, key=None):
        """Animate `image` following `prompt`.

        image: a path, PIL image or array; a list of them is a batch (with a list of
        prompts of the same length, or one prompt for all). With
        `given_frames_as_video=True` the list is instead the M given frames of ONE
        video (video prediction; M <= num_frames - 1).
        num_new_frames: N; default 15 (the published demo), or what the checkpoint's
        model_index.json recommends ("num_new_frames"; 7 for the shipped tiny model).
        Returns uint8 (1 + N, H, W, 3) with the given image first (M + N for
        prediction), or (B, 1 + N, H, W, 3) for a batch. `baseline=True` runs the
        paper's replacing-based baseline instead (num_frames frames, N ignored).
        seed: an int (item i gets seed + i) or one seed per item; each item's noise comes
        from `jax.random.key(seed)` alone. key: instead of seeds, one `jax.random.key`
        for the batch, item i getting `fold_in(key, i)` (the samplers' own convention).
        """
        num_new_frames = self.default_num_new_frames if num_new_frames is None else num_new_frames
        _check_settings(num_new_frames=num_new_frames, num_inference_steps=num_inference_steps,
                        resample_iters=resample_iters, guidance_scale=guidance_scale, eta=eta, slide=slide,
                        num_frames=self.num_frames)
        h, w = self._size(height, width)
        if given_frames_as_video:
            frames = np.stack([io.load_image(f, (h, w)) for f in image])[None]
            if frames.shape[1] > self.num_frames - 1:
                raise ValueError(f"video prediction takes at most num_frames - 1 = {self.num_frames - 1} "
                                 f"given frames, got {frames.shape[1]}")
            prompts, single = [prompt], True
        else:
            single = not isinstance(image, (list, tuple))
            images = [image] if single else list(image)
            if not images:
                raise ValueError("no image given")
            if isinstance(prompt, str):
                prompts = [prompt] * len(images)
            else:
                prompts = list(prompt)
                if len(prompts) != len(images):
                    raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
            frames = np.stack([io.load_image(f, (h, w)) for f in images])[:, None]
        ctx, uncond = self.contexts(prompts)
        keys = (par.per_item_keys(self._seeds(seed, frames.shape[0])) if key is None
                else schedule.item_keys(key, frames.shape[0]))
        timesteps = jnp.asarray(schedule.ddim_timesteps(num_inference_steps))
        settings = dict(num_new_frames=int(num_new_frames), guidance_scale=float(guidance_scale),
                        resample_iters=int(resample_iters), eta=float(eta), ddpm_inversion=bool(ddpm_inversion),
                        slide=slide, baseline=bool(baseline), progress=bool(progress) and not baseline)
        batch_t = jnp.broadcast_to(timesteps, (frames.shape[0],) + timesteps.shape)
        args = (keys, jnp.asarray(frames, self.dtype), ctx, uncond, batch_t)
        if settings["progress"]:
            from tqdm.auto import tqdm

            with tqdm(total=int(num_new_frames), desc="new frames", unit="frame") as bar:
                programs._PROGRESS["bar"] = bar
                try:
                    new = jax.block_until_ready(self._run(programs.ti2v_program, settings, args, parallel))
                finally:
                    programs._PROGRESS["bar"] = None
        else:
            new = self._run(programs.ti2v_program, settings, args, parallel)
        video = np.concatenate([io.to_uint8(frames), io.to_uint8(np.asarray(new, np.float32))], axis=1)
        return video[0] if single else video

    def text_to_video(self, prompt, *, num_inference_steps: int = 50, guidance_scale: float = 9.0,
                      eta: float = 0.0, seed=0, height=None, width=None, num_frames: int | None = None,
                      parallel: str = "none"):
        """Plain text-to-video DDIM sampling. Returns uint8 (F, H, W, 3), or (B, F, ...) for a list."""
        _check_settings(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta)
        h, w = self._size(height, width)
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        f = int(num_frames or self.num_frames)
        ctx, uncond = self.contexts(prompts)
        keys = par.per_item_keys(self._seeds(seed, len(prompts)))
        timesteps = jnp.asarray(schedule.ddim_timesteps(num_inference_steps))
        batch_t = jnp.broadcast_to(timesteps, (len(prompts),) + timesteps.shape)
        settings = dict(latent_shape=(f, h // self.vae_scale, w // self.vae_scale, self.latent_channels),
                        guidance_scale=float(guidance_scale), eta=float(eta))
        out = self._run(programs.t2v_program, settings, (keys, ctx, uncond, batch_t), parallel)
        video = io.to_uint8(np.asarray(out, np.float32))
        return video[0] if single else video
