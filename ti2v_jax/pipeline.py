"""TI2VZeroPipeline: image + text -> video with a frozen text-to-video model.

    pipe = TI2VZeroPipeline.from_pretrained()                   # the shipped default model
    pipe = TI2VZeroPipeline.from_pretrained("ckpt/")            # converted, diffusers or ModelScope layout
    video = pipe("cat.png", "a cat running").frames             # uint8 (1 + N, H, W, 3)
    videos = pipe(["a.png", "b.png"], ["a dog", "a car"]).frames  # uint8 (2, 1 + N, H, W, 3)
    clip = pipe.text_to_video("a panda surfing").frames         # uint8 (K, H, W, 3)

Sampler settings are `ti2v_jax.settings.SamplerSettings` (give one as `settings=` or its
fields as keyword arguments). All heavy work is one jitted program per shape and static
setting: text encoding, then the sampler (`lax.scan` over new frames and DDIM steps)
with the VAE inside it. Guidance, eta and resampling schedules are arguments of that
program, so changing their values does not recompile, except where a value changes one
of three static facts of the program (`SamplerSettings.static_key`): whether any
guidance differs from 1, whether any eta differs from 0, and the largest resample count.
The weights are an argument too: `params=` swaps them without recompiling.

Precision: parameters and U-Net compute in `dtype`; the VAE and the text encoder in
float32 unless `vae_text_dtype` says otherwise; everything the sampler does between
network calls in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax import io, loading, programs
from ti2v_jax import parallel as par
from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, InputError, SettingsError
from ti2v_jax.executables import Executables
from ti2v_jax.sampling import schedule
from ti2v_jax.settings import DEFAULT_NUM_NEW_FRAMES, SamplerSettings, parse_seed
from ti2v_jax.platforms import jit
from ti2v_jax.tokenizer import tokenize

log = logging.getLogger(__name__)

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default_model"
DEFAULT_NUM_FRAMES = 16  # ModelScope's K
PROGRAM_CACHE_SIZE = 16  # compiled programs a pipeline keeps (one per static settings, mode and devices)
# "np" and "pil" as in diffusers ("np": float32 in [0, 1] on the host); "jax": the same on the device.
OUTPUT_TYPES = ("uint8", "np", "pil", "jax", "latent")


@dataclasses.dataclass(frozen=True)
class TI2VZeroPipelineOutput:
    """A pipeline call's result, as diffusers' pipelines return theirs: the video(s) in `.frames`
    (see `TI2VZeroPipeline.__call__`'s output_type); `return_dict=False` gives `(frames,)` instead."""
    frames: object


def resolve_model(path_or_repo_id=None) -> Path:
    """A local checkpoint directory for `path_or_repo_id` (None or "default": the shipped model)."""
    if path_or_repo_id is None or str(path_or_repo_id) == "default":
        if (DEFAULT_MODEL / "model_index.json").is_file():
            return DEFAULT_MODEL
        raise CheckpointNotFoundError(f"no default model is shipped in this install ({DEFAULT_MODEL}); "
                                      f"pass a checkpoint directory")
    p = Path(path_or_repo_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"model {p} is a file; expected a checkpoint directory")
        return p
    s = str(path_or_repo_id)
    looks_like_repo = s.count("/") == 1 and not s.startswith((".", "/", "~")) and " " not in s
    if not looks_like_repo:
        raise CheckpointNotFoundError(f"model directory {p} does not exist")
    # A mistyped local path looks like a repo id: say first that there is no such folder.
    missing = f"no such folder {s!r} (from {Path.cwd()})"
    how = ("download or copy the checkpoint elsewhere, then run `ti2v-jax convert LOCAL_DIR OUT_DIR` "
           "and pass --model OUT_DIR")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointNotFoundError(f"{missing}, and the hub is offline (HF_HUB_OFFLINE) for the repo id {s!r}; "
                                      f"{how}")
    try:
        import huggingface_hub
    except ImportError as e:  # pragma: no cover - depends on the install
        raise CheckpointNotFoundError(f"{missing}, and huggingface_hub is not installed to fetch the repo id "
                                      f"{s!r}; {how}") from e
    log.info("%s; downloading the hub repo %s", missing, s)
    try:
        files = huggingface_hub.list_repo_files(s)
        return Path(huggingface_hub.snapshot_download(s, allow_patterns=hub_files(files), etag_timeout=10))
    except Exception as e:  # network errors come in many types
        raise CheckpointNotFoundError(f"{missing}, and the hub repo {s!r} could not be downloaded "
                                      f"({type(e).__name__}); {how}") from e


_WEIGHTS = (".safetensors", ".bin")


def hub_files(files) -> list[str]:
    """The files of a hub repo a checkpoint needs: every config and tokenizer file, a converted
    checkpoint's `<component>/params/` folders, the original ModelScope release's `.pth` files,
    and per folder one copy of the diffusers/transformers
    weights (safetensors before .bin; the full-precision files, not the `.fp16.` variants, when
    both are there), so a repo's duplicate formats are not downloaded."""
    keep = [f for f in files if f.endswith((".json", ".txt", ".model", ".pth")) or "/params/" in f]
    folders: dict[str, list[str]] = {}
    for f in files:
        if f.endswith(_WEIGHTS):
            folders.setdefault(os.path.dirname(f), []).append(f)
    for names in folders.values():
        plain = [f for f in names if ".fp16." not in f] or names
        for ext in _WEIGHTS:
            chosen = [f for f in plain if f.endswith(ext)]
            if chosen:
                keep += chosen
                break
    return sorted(set(keep))


def _check_output_type(output_type) -> None:
    if output_type not in OUTPUT_TYPES:
        raise SettingsError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")


def _bar_callback(total: int, desc: str):
    """A per-call progress callback drawing a tqdm bar whose rate and ETA leave out compilation:
    the first report (compilation + the first unit) only starts the clock."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"{desc} (compiling, then the first)", unit=desc.split()[-1].rstrip("s"))
    t0 = time.perf_counter()

    def report(done: int, _total: int):
        if bar.n == 0 and done >= 1:
            first = time.perf_counter() - t0
            bar.set_description(desc)
            bar.set_postfix_str(f"first incl. compile {first:.1f} s", refresh=False)
            bar.reset(total=total)  # restart the clock: the rate and ETA are sampling only
            bar.update(done)
        elif done > bar.n:
            bar.update(done - bar.n)
    return bar, report


class TI2VZeroPipeline:
    """TI2V-Zero over loaded components (see `ti2v_jax.loading.Components`)."""

    def __init__(self, components: loading.Components, *, num_frames: int = DEFAULT_NUM_FRAMES, name: str = "",
                 default_num_new_frames: int = DEFAULT_NUM_NEW_FRAMES, devices=None, executables=None):
        self.components = components
        # Compiled programs (at most PROGRAM_CACHE_SIZE, least recently used dropped) and the
        # weights' placements, both owned by this pipeline and gone with it.
        self._programs: OrderedDict = OrderedDict()
        self._placements: dict = {}
        self.executables = None if executables is None else Executables(executables)
        self.num_frames = int(num_frames)
        if self.num_frames < 2:
            raise SettingsError(f"num_frames must be >= 2, got {num_frames}")
        self.default_num_new_frames = int(default_num_new_frames)
        self.devices = None if devices is None else tuple(devices)
        self.dtype = programs.component_dtypes(components)["unet"]
        self.name = name
        self.params = components.params
        ucfg, vcfg = components.configs["unet"], components.configs["vae"]
        width = components.configs.get("text_encoder", {}).get("hidden_size")
        if width is not None and ucfg.get("cross_attention_dim", width) != width:
            raise CheckpointError(f"the checkpoint's parts do not fit: the U-Net attends to "
                                  f"{ucfg['cross_attention_dim']}-wide text contexts but the text encoder's "
                                  f"hidden_size is {width}")
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
        self._spec = programs.ProgramSpec(components, self.num_frames, self.abar)

    @classmethod
    def from_pretrained(cls, path_or_repo_id=None, *, dtype="float32", vae_text_dtype="float32",
                        num_frames: int | None = None, devices=None, attention: str | None = None,
                        verify: bool = True, executables=None):
        """Load a checkpoint: None (or "default") for the shipped default model, a converted,
        diffusers-layout or original ModelScope directory (the last two converted in memory),
        or a hub repo id (online only).

        dtype: parameters and U-Net compute (float32, bfloat16, float16). vae_text_dtype: the
        VAE's and text encoder's (float32 by default; None: the same as `dtype`).
        devices: the devices to place the weights on once (default: the default device);
        give the devices you will run on with parallel="mesh"/"pmap".
        attention: the attention kernel (None: the one `platforms.PLATFORMS` names for the
        devices' platform). verify: check the checkpoint's recorded file hashes.
        executables: a folder of programs compiled ahead (`ti2v-jax plan --save-executables`),
        used for the calls they were compiled for; other calls compile (one logged line says why).
        """
        folder = loading.read_folder(resolve_model(path_or_repo_id))  # its index parsed once, for load and here
        dtype = jnp.dtype(dtype)
        aux = dtype if vae_text_dtype is None else jnp.dtype(vae_text_dtype)
        comps = loading.load(folder, dtype=dtype, component_dtypes={"vae": aux, "text_encoder": aux},
                             devices=devices, attention=attention, verify=verify)
        index = folder.index or {}
        k = num_frames or int(index.get("num_frames", DEFAULT_NUM_FRAMES))
        n = int(index.get("num_new_frames", DEFAULT_NUM_NEW_FRAMES))  # a checkpoint may recommend its own N
        name = "default" if folder.path == DEFAULT_MODEL else str(path_or_repo_id)
        return cls(comps, num_frames=k, name=name, default_num_new_frames=n, devices=devices,
                   executables=executables)

    # ------------------------------------------------------------------ helpers

    def settings(self, settings: SamplerSettings | None = None, **kwargs) -> SamplerSettings:
        """`settings` (default: the defaults) with `kwargs` applied and this model's defaults
        filled in (num_new_frames, height, width); checks the size against the VAE."""
        s = SamplerSettings.from_kwargs(settings, **kwargs).resolved(
            num_new_frames=self.default_num_new_frames, height=self.default_size[0], width=self.default_size[1],
            multiple=self.vae_scale)
        return s

    def contexts(self, prompts, params=None):
        """(text, empty-text) contexts for a list of prompts, each (B, 77, D) float32."""
        ids = tokenize(self.components.tokenizer, list(prompts) + [""])
        params = self.params if params is None else params
        ctx = self._encode_text(params["text_encoder"], jnp.asarray(ids)).astype(jnp.float32)
        text, empty = ctx[:-1], ctx[-1:]
        return text, jnp.broadcast_to(empty, text.shape)

    def _keys(self, seed, key, n):
        """The videos' keys (B,): `key` (one per video, or one for one video), else jax.random.key
        of each seed (an int for a batch: seed + i), so `seed=s` and `key=jax.random.key(s)` agree."""
        if key is not None:
            if not jnp.issubdtype(getattr(key, "dtype", np.uint32), jax.dtypes.prng_key):
                key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))  # raw PRNGKey data: the same key
            try:
                return schedule.item_keys(key, n)
            except ValueError as e:
                raise SettingsError(str(e)) from None
        if isinstance(seed, (list, tuple, np.ndarray)):
            if len(seed) != n:
                raise SettingsError(f"got {len(seed)} seeds for a batch of {n}")
            seeds = [parse_seed(s) for s in seed]
        else:
            first = parse_seed(seed)
            seeds = [parse_seed(first + i) for i in range(n)]
        return par.per_item_keys(seeds)

    def _per_item(self, settings, n: int, **kwargs) -> list[SamplerSettings]:
        items = settings if isinstance(settings, (list, tuple)) else [settings] * n
        if len(items) != n:
            raise SettingsError(f"got {len(items)} settings for a batch of {n}")
        items = [self.settings(s, **kwargs) for s in items]
        if len({s.static_key() for s in items}) != 1:
            raise SettingsError("settings in one call may differ only in guidance, eta and resample values "
                                "(with the same largest resample); run other settings in separate calls")
        return items

    def _check_params(self, params) -> None:
        """`params=` must be a drop-in for `self.params` (same tree, shapes, dtypes): then the
        compiled programs take it as they are."""
        if params is None:
            return
        if jax.tree.structure(params) != jax.tree.structure(self.params):
            raise InputError("params= must have the same structure as the pipeline's params (the checkpoint's)")
        for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(self.params), jax.tree.leaves(params)):
            if jnp.shape(g) != w.shape or jnp.result_type(g) != w.dtype:
                raise InputError(f"params= differs from the pipeline's params at {jax.tree_util.keystr(path)}: "
                                 f"{jnp.shape(g)} {jnp.result_type(g)} instead of {w.shape} {w.dtype}")

    def _check_memory(self, s: SamplerSettings, batch: int) -> None:
        from ti2v_jax import resources

        est = resources.estimate_bytes(self.components.configs["unet"], self.components.configs["vae"],
                                       batch=batch, num_frames=self.num_frames, height=s.height, width=s.width,
                                       num_new_frames=s.num_new_frames, dtype=self.dtype)
        resources.check_fits(est, (self.devices or jax.local_devices())[0])

    def _placed(self, parallel_mode: str):
        """The weights laid out as `parallel_mode`'s programs take them, placed once per pipeline
        and layout (with `devices=` at load they already are: no copy is made)."""
        if parallel_mode == "none":
            return self.params
        devices = self.devices or (jax.devices() if parallel_mode == "mesh" else jax.local_devices())
        sharding = par.replicated(devices)
        key = (parallel_mode, tuple(devices))
        if key not in self._placements:
            self._placements[key] = par.place(self.params, sharding)
        return self._placements[key]

    def _run(self, program, static: dict, args, parallel_mode, total: int, unit: str, progress, params=None):
        """Run `program` over the batch. `progress`: None/False, True (a bar) or callback(done, total).
        Without progress reporting the outputs come back as soon as the work is queued (JAX's
        asynchronous dispatch); with it, once done (the reports belong to this call)."""
        # A partial of (program, spec, hashable static settings): the pipeline's program cache
        # is keyed on exactly that (and the parallel mode and devices).
        if self.executables is not None:  # saved programs have no progress callback (`programs._reporter`)
            static = dict(static, report=False)
        fn = functools.partial(program, self._spec, **static)
        run = par.batched(fn, mode=parallel_mode, devices=self.devices, replicated=True, cache=self._programs,
                          cache_size=PROGRAM_CACHE_SIZE)
        bar = None
        if progress is True:
            bar, progress = _bar_callback(total, unit)
        scope = programs.progress(progress) if progress else contextlib.nullcontext(0)
        try:
            with scope as ticket:
                ticket_arr = jnp.full((args[0].shape[0],), ticket, jnp.int32)
                weights = self._placed(parallel_mode) if params is None else params
                out = run(*args, ticket_arr, replicated=weights, saved=self.executables)
                if progress and self.executables is not None:  # the program reports nothing itself
                    out = jax.block_until_ready(out)
                    progress(total, total)
                return jax.block_until_ready(out) if progress else out
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _output(latents, frames, output_type, single, return_dict, given=None):
        """The call's result in `output_type` (see __call__), the `given` frames first."""
        if output_type == "latent":
            out = latents
        elif output_type in ("uint8", "pil"):
            parts = ([] if given is None else [given]) + [np.asarray(frames, np.float32)]
            out = io.to_uint8(np.concatenate(parts, axis=1))
        else:
            video = frames if given is None else jnp.concatenate([jnp.asarray(given, jnp.float32), frames], axis=1)
            video = jnp.clip((video + 1) / 2, 0, 1)
            out = video if output_type == "jax" else np.asarray(video)
        if output_type == "pil":
            from PIL import Image

            out = [[Image.fromarray(frame) for frame in video] for video in out]
        out = out[0] if single else out
        return TI2VZeroPipelineOutput(frames=out) if return_dict else (out,)

    # ------------------------------------------------------------------ public API

    def __call__(self, image, prompt, settings=None, *, seed=0, key=None, parallel: str = "none", progress=False,
                 given_frames_as_video: bool = False, output_type: str = "uint8", return_dict: bool = True,
                 params=None, **setting_kwargs):
        """Animate `image` following `prompt`.

        image: a path, PIL image or array; a list of them is a batch (with a list of
        prompts of the same length, or one prompt for all). With
        `given_frames_as_video=True` the list is instead the M given frames of ONE
        video (video prediction; M <= num_frames - 1).
        settings: a `SamplerSettings`, or one per item of a batch (they may differ only in
        guidance, eta and resample values: a grid in one program); keyword arguments
        (`steps=25`, `guidance=7.5`, ..., or the aliases `num_inference_steps`, ...) change it.
        num_new_frames defaults to what the checkpoint recommends (model_index.json
        "num_new_frames"; 7 for the shipped model), else 15.
        seed / key: each video draws all its noise from its own key, so it is the same video
        alone, in any batch, on one device or many (the samplers' rule). seed: an int (item i
        of a batch gets seed + i) or one seed per item; seed s means `jax.random.key(s)`.
        key: instead of seeds, the keys themselves: shape (B,), one per video (e.g.
        `jax.random.split(key, B)`), or one key for a single video; `key=jax.random.key(s)`
        gives the video of `seed=s`.
        progress: True for a progress bar, or a callback `f(done, total)` over new frames.
        output_type: "uint8" (host array, (1 + N, H, W, 3) with the given image first, M + N
        for prediction; the baseline gives num_frames frames), "np" (the same as float32 in
        [0, 1] on the host), "pil" (the same as a list of PIL images), "jax" (as "np", on the
        device) or "latent" (the new frames' latents (N, h, w, C) float32 on the device).
        "jax" and "latent" return at once, before the device is done (JAX's asynchronous
        dispatch), unless `progress` is given.
        Batch axis: a list of images (or of prompts) is a batch and adds a leading axis (a list
        level for "pil"), whatever its length; one image and one prompt give one video without it.
        Returns a `TI2VZeroPipelineOutput` whose `.frames` is that, or `(frames,)` with
        `return_dict=False`.
        params: a parameter pytree of the same structure, shapes and dtypes as `self.params`
        (e.g. fine-tuned weights) used for this call instead; nothing is reloaded or recompiled.
        """
        _check_output_type(output_type)
        self._check_params(params)
        if given_frames_as_video:
            if not isinstance(image, (list, tuple)):
                raise InputError("given_frames_as_video takes a list of frames")
            n_items, single, prompts = 1, True, [prompt]
            if not isinstance(prompt, str):
                raise InputError("video prediction takes one prompt")
        else:
            single = not isinstance(image, (list, tuple)) and isinstance(prompt, str)
            images = list(image) if isinstance(image, (list, tuple)) else [image]
            if not images:
                raise InputError("no image given")
            if isinstance(prompt, str):
                prompts = [prompt] * len(images)
            else:
                prompts = list(prompt)
                if len(images) == 1 and not isinstance(image, (list, tuple)):
                    images = images * len(prompts)  # one image, several prompts
                if len(prompts) != len(images):
                    raise InputError(f"got {len(images)} images but {len(prompts)} prompts")
            n_items = len(images)
        items = self._per_item(settings, n_items, **setting_kwargs)
        s = items[0]
        self._check_memory(s, n_items)
        keys = self._keys(seed, key, n_items)
        size = (s.height, s.width)
        if given_frames_as_video:
            if len(image) > self.num_frames - 1:
                raise InputError(f"video prediction takes at most num_frames - 1 = {self.num_frames - 1} "
                                 f"given frames, got {len(image)}")
            frames = np.stack([io.load_image(f, size) for f in image])[None]
        else:
            frames = np.stack([io.load_image(f, size) for f in images])[:, None]
        ctx, uncond = self.contexts(prompts, params)
        timesteps = np.broadcast_to(schedule.ddim_timesteps(s.steps), (n_items, s.steps))
        sched = {k: np.stack([it.per_step(k) for it in items]) for k in ("guidance", "eta", "resample")}
        static = programs.ti2v_static(items)
        args = (keys, jnp.asarray(frames, jnp.float32), ctx, uncond, jnp.asarray(timesteps),
                jnp.asarray(sched["guidance"]), jnp.asarray(sched["eta"]), jnp.asarray(sched["resample"]))
        total = s.steps if s.baseline else s.num_new_frames
        unit = "DDIM steps" if s.baseline else "new frames"
        latents, new = self._run(programs.ti2v_program, static, args, parallel, total, unit, progress, params)
        return self._output(latents, new, output_type, single, return_dict, given=frames)

    def text_to_video(self, prompt, settings=None, *, seed=0, key=None, num_frames: int | None = None,
                      parallel: str = "none", progress=False, output_type: str = "uint8", return_dict: bool = True,
                      params=None, **setting_kwargs):
        """Plain text-to-video DDIM sampling (uses steps, guidance, eta, height, width).

        `.frames`: uint8 (F, H, W, 3), or (B, F, ...) for a list of prompts; `seed`/`key` (one
        key per video), `output_type`, `return_dict`, `params` and `progress` (over DDIM steps)
        as in `__call__` ("latent": (F, h, w, C))."""
        _check_output_type(output_type)
        self._check_params(params)
        single = isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise InputError("no prompt given")
        items = self._per_item(settings, len(prompts), **setting_kwargs)
        s = items[0]
        f = int(num_frames or self.num_frames)
        self._check_memory(s.replace(num_new_frames=1), len(prompts))
        ctx, uncond = self.contexts(prompts, params)
        keys = self._keys(seed, key, len(prompts))
        timesteps = np.broadcast_to(schedule.ddim_timesteps(s.steps), (len(prompts), s.steps))
        sched = {k: np.stack([it.per_step(k) for it in items]) for k in ("guidance", "eta")}
        static = programs.t2v_static(items, f, self.vae_scale, self.latent_channels)
        args = (keys, ctx, uncond, jnp.asarray(timesteps), jnp.asarray(sched["guidance"]), jnp.asarray(sched["eta"]))
        latents, frames = self._run(programs.t2v_program, static, args, parallel, s.steps, "DDIM steps", progress,
                                    params)
        return self._output(latents, frames, output_type, single, return_dict)
