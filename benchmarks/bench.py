"""ti2v-jax against the PyTorch reference, side by side, same weights, same machine.

    python benchmarks/bench.py --config small                     # CPU: fp32 both
    python benchmarks/bench.py --config full --dtype bfloat16     # GPU: bf16 JAX, fp16-autocast torch

Times (a) one U-Net evaluation of a guidance pair (the text and empty-text predictions
for one K=16-frame sample: ti2v-jax in one call that runs the U-Net's text-free first
layers once, the reference as two batch-1 calls), (b) one new
TI2V-Zero frame (S=10, R=4, g=9) with the pixel slide and the latent slide, (c) a
whole video of N new frames (N=15: 16 frames with the image). Compile time is
reported apart from run time. Each implementation runs in its own process (clean
peak-memory numbers); both read one diffusers `save_pretrained` directory of random,
perturbed weights: torch with `from_pretrained`, ti2v-jax through its own
`loading.load` (in-memory conversion). Writes bench.json and bench.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import configs  # noqa: E402

PROMPT_IDS = [49406, 320, 2368, 3879, 530, 518, 2445, 49407]  # "<bos> a cat running in the park <eos>"
EMPTY_IDS = [49406, 49407]
PAIR_T = 501


def token_ids():
    pad = lambda ids: ids + [49407] * (77 - len(ids))  # noqa: E731
    return [pad(PROMPT_IDS), pad(EMPTY_IDS)]


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def median_time(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


class Report:
    """`say(line)` prints each line as it comes and keeps it; `say.write(out_dir, name)` writes
    them all to out_dir/name (nothing when out_dir is None)."""

    def __init__(self):
        self.lines = []

    def __call__(self, line: str = ""):
        print(line, flush=True)
        self.lines.append(line)

    def write(self, out_dir, name: str):
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / name).write_text("\n".join(self.lines) + "\n")


# ---------------------------------------------------------------- weights

def make_weights(cfg_name: str, dst: Path, seed: int = 0, device: str = "cpu"):
    """diffusers save_pretrained directory with random, perturbed weights (one seed for all)."""
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ti2v_jax.tokenizer import write_tiny_tokenizer

    cfg = configs.get(cfg_name)
    strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    torch.manual_seed(seed)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    with torch.device(device):
        models = {"unet": UNet3DConditionModel(**strip(cfg["unet"])),
                  "vae": AutoencoderKL(**strip(cfg["vae"])),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg["text_encoder"].items()
                                                                  if k not in ("architectures",)}))}
    with torch.no_grad():
        for m in models.values():  # diffusers zero-inits some layers: perturb every parameter
            for p in m.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype))
    dst.mkdir(parents=True, exist_ok=True)
    for name, m in models.items():
        m.save_pretrained(dst / name, safe_serialization=True)
    write_tiny_tokenizer(dst / "tokenizer")  # ids are fixed below; the files only make a complete pipeline dir
    (dst / "scheduler").mkdir(exist_ok=True)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(configs.scheduler()))
    (dst / "model_index.json").write_text(json.dumps({
        "_class_name": "TextToVideoSDPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet3DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"]}))
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    return n_params


def count_flops(cfg_name: str) -> float:
    """Model FLOPs of one 16-frame, batch-1 U-Net pass at 32x32 latents (torch FlopCounter)."""
    if cfg_name in configs.FLOPS_PER_PASS and cfg_name != "small":
        return configs.FLOPS_PER_PASS[cfg_name]
    import torch
    from diffusers import UNet3DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    c = {k: v for k, v in configs.get(cfg_name)["unet"].items() if not k.startswith("_")}
    unet = UNet3DConditionModel(**c).eval()
    x = torch.randn(1, 4, 16, 32, 32)
    ctx = torch.randn(1, 77, c["cross_attention_dim"])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        unet(x, torch.tensor([PAIR_T]), encoder_hidden_states=ctx)
    return float(fc.get_total_flops())


# ---------------------------------------------------------------- ti2v-jax

def attention_arg(name: str) -> str | None:
    """`--attention` as the models' `attention=`: "auto" is None (the platform's automatic
    choice, `ti2v_jax.platforms.PLATFORMS`: cuDNN on GPU, blocked on CPU)."""
    from ti2v_jax.models import layers

    return layers.check_attention(None if name in ("auto", "none", None) else name)


def sampler_call(fn, keys, denoise, text, empty, *rest, guidance, resample, **kw):
    """fn(...) for a TI2V-Zero sampler function (`slide_frame`, `ti2v_zero_sample`, ...) with the
    network `denoise` and both contexts, guided by `sampling.cfg_denoiser`."""
    from ti2v_jax.sampling.guidance import cfg_denoiser

    return fn(keys, cfg_denoiser(denoise, text, empty), *rest, guidance=guidance, resample=resample, **kw)


def program_fns(comps, k, abar):
    """The pipeline's (denoise, encode, decode) maker for weights p (`ProgramSpec.fns`)."""
    from ti2v_jax.programs import ProgramSpec

    return ProgramSpec(comps, k, abar).fns


def load_components(weights, dt, attention):
    """`loading.load` of the benchmark's weights with the attention choice."""
    from ti2v_jax import loading

    return loading.load(weights, dtype=dt, tokenizer=False, attention=attention)


def jax_setup(args):
    """ti2v-jax's side, up to the timings: the weights loaded (and converted) from args.weights,
    the two contexts encoded, the attention chosen. Returns a namespace that `jax_pair` and
    `jax_frame` (and interleaved.py) build their programs from; `info` holds what run_jax
    reports of it."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp

    from ti2v_jax.models import layers
    from ti2v_jax.sampling import schedule
    from ti2v_jax.sampling.ti2v_zero import pad_queue
    from ti2v_jax.platforms import attention_for, compiler_options, jit

    dev = jax.devices()[0]
    gpu = dev.platform == "gpu"
    dt = jnp.dtype(args.dtype)
    attn = attention_arg(args.attention)
    info = dict(impl="ti2v-jax", jax=jax.__version__, device=f"{dev.platform}: {dev.device_kind}",
                dtype=dt.name, attention=f"{attn or 'automatic'} ({attention_for(attn, dev.platform)})",
                compiler_options=compiler_options(dev.platform))
    sync = jax.block_until_ready
    t0 = time.perf_counter()
    comps = load_components(args.weights, dt, attn)
    p = sync(comps.params)
    info["load_s"] = time.perf_counter() - t0
    ucfg = comps.configs["unet"]
    k, lat = args.frames, ucfg.get("sample_size", 32)
    scale = 2 ** (len(comps.configs["vae"]["block_out_channels"]) - 1)
    abar = schedule.alphas_cumprod()

    # contexts from the text encoder (same ids as torch)
    enc = jit(comps.text_encode)
    ids = jnp.asarray(token_ids(), jnp.int32)
    t0 = time.perf_counter()
    ctx_all = sync(enc(p["text_encoder"], ids))
    info["text_encode_compile_and_run_s"] = time.perf_counter() - t0
    info["text_encode_s"], _ = median_time(lambda: sync(enc(p["text_encoder"], ids)), 3)

    fns = program_fns(comps, k, abar)  # the pipeline's (denoise, encode, decode) for params pp
    img = jax.random.uniform(jax.random.key(2), (1, 1, lat * scale, lat * scale, 3), jnp.float32, -1, 1)
    return types.SimpleNamespace(
        jax=jax, jnp=jnp, sync=sync, jit=jit, layers=layers, attention_for=attention_for, schedule=schedule, dev=dev, gpu=gpu, dt=dt,
        attn=attn, info=info, comps=comps, p=p, ucfg=ucfg, k=k, lat=lat, abar=abar, fns=fns, img=img,
        text=ctx_all[:1].astype(dt), empty=ctx_all[1:].astype(dt),
        # the start queue as the pipeline builds it: the image encoded once, then padded to K-1
        q0=sync(jit(lambda f: pad_queue(fns(p)[1](f), k - 1))(img)),
        keys=schedule.item_keys(jax.random.key(0), 1),
        common=dict(num_frames=k, timesteps=jnp.asarray(schedule.ddim_timesteps(args.steps)),
                    guidance=args.guidance, resample=args.resample, abar=abar))


def _jax_compile(s, fn, *a, donate=()):
    t0 = time.perf_counter()
    c = s.jit(fn, donate_argnums=donate).lower(*a).compile()
    return c, time.perf_counter() - t0


def jax_pair(s):
    """(a) the guidance pair: one call, the sample once with both contexts (uncond and text), as
    guided_eps sends it (the U-Net runs its text-free first layers once, the rest at batch 2).
    Returns (run, compile seconds); run() computes one pair and waits for it."""
    jax, jnp = s.jax, s.jnp
    x = jax.random.normal(jax.random.key(1), (1, s.k, s.lat, s.lat, s.ucfg.get("in_channels", 4)),
                          jnp.float32).astype(s.dt)
    tt = jnp.full((1,), PAIR_T, jnp.int32)
    ctx2 = jnp.concatenate([s.empty, s.text])
    pair_fn = lambda pu, x, t, c: s.comps.unet_apply(pu, x, t, c)  # noqa: E731
    pair, compile_s = _jax_compile(s, pair_fn, s.p["unet"], x, tt, ctx2)
    return (lambda: s.sync(pair(s.p["unet"], x, tt, ctx2))), compile_s


def jax_frame(s, slide):
    """(b) one new frame: the body of the video's scan (sampling.slide_frame), as its own program
    (queue donated). Both slides carry a latent queue: the pixel slide encodes each decoded frame
    once. Returns (program, run, compile seconds): program(params, keys, queue, text, empty) ->
    queue; run() computes one frame from a copy of the start queue and waits for it."""
    from ti2v_jax.sampling.ti2v_zero import slide_frame

    def frame(pp, keys, queue, text, empty):
        denoise, encode, decode = s.fns(pp)
        return sampler_call(slide_frame, keys, denoise, text, empty, encode, decode, queue, slide=slide,
                            **s.common)[0]

    c, compile_s = _jax_compile(s, frame, s.p, s.keys, s.q0, s.text, s.empty, donate=(2,))
    return c, (lambda: s.sync(c(s.p, s.keys, s.jnp.array(s.q0, copy=True), s.text, s.empty))), compile_s


def run_jax(args, out: dict, save):
    import numpy as np

    from ti2v_jax.sampling.ti2v_zero import ti2v_zero_sample

    s = jax_setup(args)
    out.update(s.info)
    try:
        pair, out["pair_compile_s"] = jax_pair(s)
    except Exception as e:  # e.g. cuDNN rejecting a shape: rebuild with XLA attention, say so
        if s.attention_for(s.attn, s.dev.platform) != "cudnn":
            raise
        out["attention_fallback"] = f"{type(e).__name__}: {str(e)[:300]}"
        args.attention = "xla"
        s = jax_setup(args)
        out["attention"] = "xla (cudnn failed)"
        pair, out["pair_compile_s"] = jax_pair(s)
    jax, jnp, sync, jit, layers, schedule = s.jax, s.jnp, s.sync, s.jit, s.layers, s.schedule
    dev, dt, attn, k, lat, ucfg = s.dev, s.dt, s.attn, s.k, s.lat, s.ucfg
    p, keys, q0, img, text, empty, fns, common = s.p, s.keys, s.q0, s.img, s.text, s.empty, s.fns, s.common

    def dev_peak():
        try:
            return dev.memory_stats().get("peak_bytes_in_use", 0) / 2**30
        except Exception:
            return None

    pair()
    out["pair_s"], out["pair_all_s"] = median_time(pair, args.repeats)
    out["peak_device_gib_after_pair"] = dev_peak()
    print(f"[jax] pair {out['pair_s']:.3f}s (compile {out['pair_compile_s']:.1f}s)", flush=True)
    save()

    compiled_frames = {}
    for slide in ("latent", "pixel"):
        compiled_frames[slide], one, out[f"frame_{slide}_compile_s"] = jax_frame(s, slide)
        # A compiled program's first run can pay one-time costs (the small pair on the 2-core
        # CPU: 2.2 s first, 1.2-1.5 s after; the H100 run timed from the first run got 2.42 then
        # 2.03 s per frame): timed and reported apart, not part of a frame.
        out[f"frame_{slide}_first_run_s"], _ = median_time(one, 1)
        out[f"frame_{slide}_s"], ts = median_time(one, args.frame_repeats)
        out[f"frame_{slide}_all_s"] = ts
        out[f"peak_device_gib_after_frame_{slide}"] = dev_peak()
        print(f"[jax] frame {slide} {out[f'frame_{slide}_s']:.2f}s "
              f"(compile {out[f'frame_{slide}_compile_s']:.1f}s) {ts}", flush=True)
        save()

    # (c) the whole video: one program (lax.scan over new frames), N new frames; or, with
    # --video-mode loop (saves a compile on a short GPU lease), N dispatches of the frame
    # program above with the queue kept on the device and no host sync until the end.
    for slide in args.video_slides if args.video_mode == "loop" else ():
        n = args.new_frames
        c = compiled_frames[slide]
        t0 = time.perf_counter()
        q = jnp.array(q0, copy=True)
        for i in range(n):
            q = c(p, schedule.fold(keys, i), q, text, empty)
        sync(q)
        out[f"video_{slide}_s"] = time.perf_counter() - t0
        out[f"video_{slide}_new_frames"] = n
        out[f"video_{slide}_mode"] = "loop of frame program"
        out[f"video_{slide}_finite"] = bool(np.isfinite(np.asarray(q, np.float32)).all())
        out[f"peak_device_gib_after_video_{slide}"] = dev_peak()
        print(f"[jax] video (loop) {slide} N={n} {out[f'video_{slide}_s']:.2f}s", flush=True)
        save()
    for slide in args.video_slides if args.video_mode == "scan" else ():
        n = args.new_frames

        def video(pp, keys, frames, text, empty, slide=slide, n=n):
            denoise, encode, decode = fns(pp)
            res = sampler_call(ti2v_zero_sample, keys, denoise, text, empty, encode, decode, frames,
                               num_new_frames=n, slide=slide, **common)
            return res[1]

        c, out[f"video_{slide}_compile_s"] = _jax_compile(s, video, p, keys, img.astype(dt), text, empty)
        t0 = time.perf_counter()
        v = sync(c(p, keys, img.astype(dt), text, empty))
        out[f"video_{slide}_s"] = time.perf_counter() - t0
        out[f"video_{slide}_new_frames"] = n
        out[f"video_{slide}_finite"] = bool(np.isfinite(np.asarray(v, np.float32)).all())
        out[f"peak_device_gib_after_video_{slide}"] = dev_peak()
        print(f"[jax] video {slide} N={n} {out[f'video_{slide}_s']:.2f}s "
              f"(compile {out[f'video_{slide}_compile_s']:.1f}s)", flush=True)
        save()

    # attention kernel alone, at the U-Net's widest spatial self-attention (level 0, 1024 tokens)
    heads = ucfg["block_out_channels"][0] // ucfg["attention_head_dim"]
    c0 = ucfg["block_out_channels"][0]
    qa = jax.random.normal(jax.random.key(3), (3, 2 * k, lat * lat, c0), jnp.float32).astype(dt)
    att = jit(lambda q, kk, v: layers.attention(q, kk, v, heads, implementation=attn))
    sync(att(qa[0], qa[1], qa[2]))
    out["attention_s"], _ = median_time(lambda: sync(att(qa[0], qa[1], qa[2])), args.repeats)
    out["attention_shape"] = f"({2 * k}, {lat * lat} tokens, {heads} heads x {c0 // heads})"
    out["peak_rss_gib"] = peak_rss_gib()
    out["peak_device_gib"] = dev_peak()
    save()


# ---------------------------------------------------------------- PyTorch reference

def tuned_compile_mode(args, gpu: bool):
    """The tuned peer's torch.compile mode: --torch-compile-mode, where "auto" is
    "max-autotune-no-cudagraphs" on GPU and inductor's default on CPU; None for "none" (eager)."""
    mode = args.torch_compile_mode
    if mode == "auto":
        mode = "max-autotune-no-cudagraphs" if gpu else "default"
    return None if mode == "none" else mode


def torch_setup(args, tuned: bool = False):
    """The reference's side, up to the timings (as `jax_setup`): the diffusers modules loaded from
    args.weights, the two contexts encoded, the pair's sample, start image and latent queue.
    tuned: the tuned peer (`reference_torch.TunedTI2VZero`: modules in --torch-tuned-dtype, SDPA,
    batch-2 guidance, the U-Net torch.compile'd lazily at its first call); else the published loop."""
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextModel

    from reference_torch import TorchTI2VZero, TunedTI2VZero

    gpu = torch.cuda.is_available() and args.torch_device != "cpu"
    device = torch.device("cuda" if gpu else "cpu")
    ac = torch.float16 if gpu else None
    info = dict(impl="pytorch reference", torch=torch.__version__, dtype="fp16 autocast" if gpu else "float32",
                device=torch.cuda.get_device_name() if gpu else f"cpu ({torch.get_num_threads()} threads)")
    tdt = getattr(torch, args.torch_tuned_dtype if gpu else "float32")
    mode = tuned_compile_mode(args, gpu)
    if tuned:
        info.update(impl="pytorch tuned peer", dtype=str(tdt).replace("torch.", ""),
                    compile=f"torch.compile(unet, mode={mode!r})" if mode else "eager (no torch.compile)",
                    attention="SDPA (AttnProcessor2_0)", guidance="one batch-2 U-Net call",
                    pixel_slide="one encode + one decode per new frame")

    def sync():
        if gpu:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    w = Path(args.weights)
    unet = UNet3DConditionModel.from_pretrained(w / "unet").to(device).eval()
    vae = AutoencoderKL.from_pretrained(w / "vae").to(device).eval()
    te = CLIPTextModel.from_pretrained(w / "text_encoder").to(device).eval()
    info["load_s"] = time.perf_counter() - t0
    k, lat = args.frames, unet.config.sample_size
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    if tuned:
        unet.to(tdt).set_attn_processor(AttnProcessor2_0())
        vae.to(tdt).set_attn_processor(AttnProcessor2_0())
        ref = TunedTI2VZero(unet, vae, device=device, dtype=tdt, compile_mode=mode, num_frames=k,
                            scaling_factor=vae.config.scaling_factor)
    else:
        ref = TorchTI2VZero(unet, vae, device=device, autocast_dtype=ac, num_frames=k,
                            scaling_factor=vae.config.scaling_factor)
    with torch.no_grad():
        ids = torch.tensor(token_ids(), device=device)
        t0 = time.perf_counter()
        ctx = te(ids).last_hidden_state
        sync()
        info["text_encode_s"] = time.perf_counter() - t0
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, 4, k, lat, lat, generator=g, device=device)
    img = torch.rand(3, lat * scale, lat * scale, generator=g, device=device) * 2 - 1
    with torch.no_grad(), ref._ctx():
        lat_q = ref.encode(img[None].repeat(k - 1, 1, 1, 1))
    sync()
    return types.SimpleNamespace(torch=torch, gpu=gpu, device=device, sync=sync, info=info, ref=ref, k=k,
                                 text=ctx[:1], empty=ctx[1:], g=g, x=x, img=img, lat_q=lat_q,
                                 kw=dict(steps=args.steps, resample=args.resample, g=args.guidance))


def torch_pair(s):
    """run() -> one guidance pair as the published code runs it (two batch-1 calls), waited for."""
    def pair():
        s.ref.unet_pair(s.x, PAIR_T, s.text, s.empty)
        s.sync()
    return pair


def torch_frame(s, slide):
    """run() -> one new frame as the published code makes it, waited for: "pixel" re-encodes the
    K-1 pixel queue frames, samples, decodes the new latent and slides the pixel queue; "latent"
    samples from the latent queue and slides it. The tuned peer: `TunedTI2VZero.next_frame` from
    the latent queue (the pixel slide decodes the new latent and encodes that frame once)."""
    torch, ref = s.torch, s.ref
    if hasattr(ref, "next_frame"):
        def tuned():
            with torch.inference_mode():
                ref.next_frame(s.lat_q, s.text, s.empty, slide=slide, gen=s.g, **s.kw)
            s.sync()
        return tuned

    def one():
        with torch.no_grad(), ref._ctx():
            if slide == "pixel":
                q = s.img[None].repeat(s.k - 1, 1, 1, 1)
                z = ref.frame(ref.encode(q), s.text, s.empty, gen=s.g, **s.kw)
                torch.cat([q[1:], ref.decode(z[None])])
            else:
                z = ref.frame(s.lat_q, s.text, s.empty, gen=s.g, **s.kw)
                torch.cat([s.lat_q[1:], z[None]])
        s.sync()
    return one


def run_torch(args, out: dict, save):
    s = torch_setup(args)
    out.update(s.info)
    torch, gpu, device, sync, ref, k, g = s.torch, s.gpu, s.device, s.sync, s.ref, s.k, s.g
    x, text, empty, img, kw = s.x, s.text, s.empty, s.img, s.kw
    lat = s.x.shape[-1]

    def reset_peak():
        if gpu:
            torch.cuda.reset_peak_memory_stats()

    def dev_peak():
        return torch.cuda.max_memory_allocated() / 2**30 if gpu else None

    pair = torch_pair(s)

    def pair_b2():
        with torch.no_grad(), ref._ctx():
            ref.unet(torch.cat([x, x]), torch.tensor([PAIR_T] * 2, device=device),
                     encoder_hidden_states=torch.cat([empty, text])).sample
        sync()

    pair()
    reset_peak()
    out["pair_s"], out["pair_all_s"] = median_time(pair, args.repeats)
    pair_b2()
    out["pair_batch2_s"], _ = median_time(pair_b2, args.repeats)
    out["peak_device_gib_after_pair"] = dev_peak()
    print(f"[torch] pair {out['pair_s']:.3f}s (batch 2: {out['pair_batch2_s']:.3f}s)", flush=True)
    save()

    for slide in ("latent", "pixel"):
        one = torch_frame(s, slide)
        reset_peak()
        out[f"frame_{slide}_s"], out[f"frame_{slide}_all_s"] = median_time(one, args.frame_repeats)
        out[f"peak_device_gib_after_frame_{slide}"] = dev_peak()
        print(f"[torch] frame {slide} {out[f'frame_{slide}_s']:.2f}s", flush=True)
        save()

    n = args.torch_new_frames if args.torch_new_frames is not None else args.new_frames
    for slide in args.video_slides if n > 0 else ():
        reset_peak()
        t0 = time.perf_counter()
        v = ref.video(img, text, empty, num_new_frames=n, slide=slide, **kw)
        sync()
        out[f"video_{slide}_s"] = time.perf_counter() - t0
        out[f"video_{slide}_new_frames"] = n
        out[f"video_{slide}_finite"] = bool(torch.isfinite(v).all())
        out[f"peak_device_gib_after_video_{slide}"] = dev_peak()
        print(f"[torch] video {slide} N={n} {out[f'video_{slide}_s']:.2f}s", flush=True)
        save()

    # attention kernel alone (SDPA), same shape as the JAX row
    ucfg = ref.unet.config
    heads = ucfg.block_out_channels[0] // ucfg.attention_head_dim
    c0 = ucfg.block_out_channels[0]
    dt = torch.float16 if gpu else torch.float32
    qa = torch.randn(3, 2 * k, heads, lat * lat, c0 // heads, generator=g, device=device).to(dt)

    def att():
        torch.nn.functional.scaled_dot_product_attention(qa[0], qa[1], qa[2])
        sync()
    att()
    out["attention_s"], _ = median_time(att, args.repeats)
    out["peak_rss_gib"] = peak_rss_gib()
    out["peak_device_gib"] = dev_peak()
    save()


def run_torch_tuned(args, out: dict, save):
    """The tuned peer: eager figures first (kept if compiling does not finish in time), then
    the compiled U-Net's first call (compile + warm-up, reported apart), pair and frames."""
    s = torch_setup(args, tuned=True)
    out.update(s.info)
    torch, ref, gpu = s.torch, s.ref, s.gpu

    def dev_peak():
        return torch.cuda.max_memory_allocated() / 2**30 if gpu else None

    pair = torch_pair(s)
    compiled = ref.unet_fn
    ref.unet_fn = ref.unet  # eager first
    pair()
    out["pair_eager_s"], _ = median_time(pair, args.repeats)
    print(f"[torch tuned] eager pair {out['pair_eager_s']:.3f}s", flush=True)
    save()
    if args.tuned_eager_frame:
        out["frame_latent_eager_s"], _ = median_time(torch_frame(s, "latent"), 1)
        print(f"[torch tuned] eager frame latent {out['frame_latent_eager_s']:.2f}s", flush=True)
        save()
    ref.unet_fn = compiled
    if ref.compile_mode is not None:
        print(f"[torch tuned] compiling ({out['compile']}) ...", flush=True)
        t0 = time.perf_counter()
        pair()
        out["compile_and_first_pair_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pair()
        out["second_pair_s"] = time.perf_counter() - t0
        print(f"[torch tuned] compile + first pair {out['compile_and_first_pair_s']:.1f}s", flush=True)
        save()
    out["pair_s"], out["pair_all_s"] = median_time(pair, args.repeats)
    out["peak_device_gib_after_pair"] = dev_peak()
    print(f"[torch tuned] pair {out['pair_s']:.3f}s", flush=True)
    save()
    for slide in ("latent", "pixel"):
        one = torch_frame(s, slide)
        out[f"frame_{slide}_first_run_s"], _ = median_time(one, 1)
        out[f"frame_{slide}_s"], out[f"frame_{slide}_all_s"] = median_time(one, args.frame_repeats)
        out[f"peak_device_gib_after_frame_{slide}"] = dev_peak()
        print(f"[torch tuned] frame {slide} {out[f'frame_{slide}_s']:.2f}s", flush=True)
        save()
    out["peak_rss_gib"] = peak_rss_gib()
    out["peak_device_gib"] = dev_peak()
    save()


# ---------------------------------------------------------------- report

def machine() -> str:
    """CPU model, family (the model name "AMD EPYC" has come as several generations here),
    its widest vector instructions (the same model name has come with and without AVX-512
    on these machines, at quite different speeds), cores, kernel."""
    cpu, isa, family = platform.processor() or platform.machine(), "", ""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    for line in info:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
        elif line.startswith("cpu family"):
            family = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            isa = next((name for flag, name in (("avx512_bf16", "AVX-512 with BF16"), ("avx512f", "AVX-512"),
                                                ("avx2", "AVX2")) if flag in flags), "no AVX2")
            break
    cpu += f" (family {family})" if family else ""
    cpu += f" ({isa})" if isa else ""
    return f"{cpu}, {os.cpu_count()} cores visible, {platform.system()} {platform.release()}"


def table(res: dict) -> str:
    j, t = res.get("jax", {}), res.get("torch", {})
    n_v = res["args"]["new_frames"]
    fl = res["flops_per_pass"]
    rows = []

    def fmt(v, unit="s"):
        return "-" if v is None else (f"{v:.3f} {unit}" if v < 10 else f"{v:.1f} {unit}")

    def ratio(a, b):
        return "-" if a is None or b is None or not a else f"{b / a:.2f}x"

    def row(name, jk, tk=None, note=""):
        a, b = j.get(jk), t.get(tk or jk)
        rows.append(f"| {name} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} | {note} |")

    row("U-Net guidance pair (K=16; jax: one call, both contexts)", "pair_s",
        note=f"torch as published: 2 batch-1 calls; torch batch-2: {fmt(t.get('pair_batch2_s'))}")
    steps, r = res["args"]["steps"], res["args"]["resample"]
    npass = steps * (r + 1)
    for slide in ("pixel", "latent"):
        row(f"one new frame, {slide} slide (S={steps}, R={r}, {npass} pairs)", f"frame_{slide}_s",
            note=f"VAE: jax 1 encode + 1 decode (each queue frame encoded once), torch {res['args']['frames'] - 1} "
                 "encodes + 1 decode"
            if slide == "pixel" else "")
    for slide in ("pixel", "latent"):
        a, b = j.get(f"video_{slide}_s"), t.get(f"video_{slide}_s")
        na, nb = j.get(f"video_{slide}_new_frames"), t.get(f"video_{slide}_new_frames")
        if a is None and b is None:
            continue
        note = ""
        if (na and na != n_v) or (nb and nb != n_v) or (b is None and t):
            note = "measured N differs: see below"
        rows.append(f"| whole video, {slide} slide, measured (jax N={na}, torch N={nb}) | {fmt(a)} | {fmt(b)} | "
                    f"{ratio(a, b) if na == nb else '-'} | {note} |")
    for slide in ("pixel", "latent"):
        # extrapolation to 15 new frames from each side's own per-frame time (labelled)
        a = j.get(f"frame_{slide}_s")
        b = t.get(f"frame_{slide}_s")
        if a is None and b is None:
            continue
        ea = a * 15 if a else None
        eb = b * 15 if b else None
        rows.append(f"| 16-frame video (N=15), {slide} slide, EXTRAPOLATED = 15 x one frame | {fmt(ea)} | "
                    f"{fmt(eb)} | {ratio(ea, eb)} | not measured; excludes first encode/final decode |")
    row("attention kernel alone " + str(j.get("attention_shape", "")), "attention_s", note="torch: SDPA")
    rows.append(f"| compile: pair / frame latent / frame pixel / video pixel | "
                f"{fmt(j.get('pair_compile_s'))} / {fmt(j.get('frame_latent_compile_s'))} / "
                f"{fmt(j.get('frame_pixel_compile_s'))} / {fmt(j.get('video_pixel_compile_s'))} | - | - | "
                f"video program compiled for N={n_v} |")
    rows.append(f"| weight load (+ conversion for jax) | {fmt(j.get('load_s'))} | {fmt(t.get('load_s'))} | - | |")
    rows.append(f"| peak host RSS (whole process) | {fmt(j.get('peak_rss_gib'), 'GiB')} | "
                f"{fmt(t.get('peak_rss_gib'), 'GiB')} | - | |")
    if j.get("peak_device_gib") or t.get("peak_device_gib"):
        rows.append(f"| peak device memory (all runs above) | {fmt(j.get('peak_device_gib'), 'GiB')} | "
                    f"{fmt(t.get('peak_device_gib'), 'GiB')} | - | jax: peak_bytes_in_use; torch: "
                    f"max_memory_allocated |")
    head = ["| what | ti2v-jax | PyTorch reference | speed-up | note |", "|---|---|---|---|---|"]
    extra = []
    if j.get("pair_s"):
        tf = 2 * fl / j["pair_s"] / 1e12
        extra.append(f"- U-Net model FLOPs: {fl / 1e12:.3f} TFLOP per 16-frame pass (batch 1); ti2v-jax pair "
                     f"{tf:.2f} TFLOP/s" + (f" = {tf / res['peak_tflops']:.1%} MFU of {res['peak_tflops']:.0f} "
                                            f"TFLOP/s dense bf16" if res.get("peak_tflops") else ""))
        if j.get("frame_latent_s"):
            tf = 2 * npass * fl / j["frame_latent_s"] / 1e12
            extra.append(f"- per new frame (latent slide, U-Net FLOPs only): {tf:.2f} TFLOP/s"
                         + (f" = {tf / res['peak_tflops']:.1%} MFU" if res.get("peak_tflops") else ""))
    if t.get("pair_s"):
        extra.append(f"- PyTorch pair: {2 * fl / t['pair_s'] / 1e12:.2f} TFLOP/s")
    if j.get("frame_latent_first_run_s") is not None:
        extra.append(f"- ti2v-jax frame programs' first runs (one-time costs, not in the frame rows): latent "
                     f"{fmt(j.get('frame_latent_first_run_s'))}, pixel {fmt(j.get('frame_pixel_first_run_s'))}")
    if j.get("attention_fallback"):
        extra.append(f"- cuDNN attention failed, XLA used: {j['attention_fallback']}")
    for side, d in (("ti2v-jax", j), ("torch", t), ("torch tuned", res.get("torch_tuned", {}))):
        if d.get("error"):
            extra.append(f"- {side} ERROR: {d['error']}")
    extra += tuned_table(res, fmt, ratio)
    return "\n".join([
        f"Config `{res['config']}`; {res['date']}; machine: {res['machine']}",
        f"ti2v-jax: {j.get('device', '-')}, {j.get('dtype', '-')}, attention {j.get('attention', '-')}, "
        f"jax {j.get('jax', '-')}, compiler options {j.get('compiler_options') or 'none'}; PyTorch: {t.get('device', '-')}, {t.get('dtype', '-')}, torch {t.get('torch', '-')}",
        f"Command: `{res['command']}`", "",
        *head, *rows, "", *extra,
        "- times: medians (frames: " + str(res["args"]["frame_repeats"]) + " runs, pair/attention: "
        + str(res["args"]["repeats"]) + "); run after compile/warm-up"])


def run_child(cmd, timeout) -> bool:
    """Run cmd in its own process group; at `timeout` seconds (None: none) stop the whole group
    (torch.compile's worker processes too). Returns whether it was stopped."""
    import signal

    if timeout is not None and timeout <= 0:
        return True
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True
    except BaseException:  # this process stopped (Ctrl-C, or SIGTERM: see main): stop the child too
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def tuned_table(res: dict, fmt, ratio) -> list:
    """The tuned PyTorch peer's rows (with ti2v-jax's, where measured in the same run)."""
    j, u = res.get("jax", {}), res.get("torch_tuned")
    if not u:
        return []
    steps, r = res["args"]["steps"], res["args"]["resample"]
    lines = ["", f"Tuned PyTorch peer: {u.get('device', '-')}, {u.get('dtype', '-')}, {u.get('compile', '-')}, "
                 f"{u.get('attention', '-')}, guidance {u.get('guidance', '-')}, pixel slide "
                 f"{u.get('pixel_slide', '-')}, torch {u.get('torch', '-')}", "",
             "| what | ti2v-jax | tuned PyTorch peer | speed-up |", "|---|---|---|---|"]
    for name, key in (("U-Net guidance pair (peer: one batch-2 call)", "pair_s"),
                      (f"one new frame, latent slide (S={steps}, R={r})", "frame_latent_s"),
                      (f"one new frame, pixel slide (S={steps}, R={r})", "frame_pixel_s")):
        lines.append(f"| {name} | {fmt(j.get(key))} | {fmt(u.get(key))} | {ratio(j.get(key), u.get(key))} |")
    lines.append(f"| eager (before torch.compile): pair / latent frame | - | {fmt(u.get('pair_eager_s'))} / "
                 f"{fmt(u.get('frame_latent_eager_s'))} | - |")
    lines.append(f"| torch.compile + first pair (not in the rows above) | - | "
                 f"{fmt(u.get('compile_and_first_pair_s'))} | - |")
    if u.get("peak_device_gib"):
        lines.append(f"| peak device memory | {fmt(j.get('peak_device_gib'), 'GiB')} | "
                     f"{fmt(u.get('peak_device_gib'), 'GiB')} | - |")
    return lines


def child(args):
    out: dict = {}
    path = Path(args.child_out)

    def save():
        path.write_text(json.dumps(out, indent=1))
    try:
        {"jax": run_jax, "torch": run_torch, "torch_tuned": run_torch_tuned}[args.child](args, out, save)
    except Exception as e:  # keep what was measured
        import traceback
        traceback.print_exc()
        out["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    out["peak_rss_gib"] = peak_rss_gib()
    save()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small", choices=configs.NAMES)
    ap.add_argument("--dtype", default="float32", help="ti2v-jax compute/param dtype (float32, bfloat16)")
    ap.add_argument("--attention", default="auto",
                    help="the models' attention=: auto (the platform's automatic choice), xla, cudnn, blocked, pallas")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resample", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=9.0)
    ap.add_argument("--new-frames", type=int, default=15, help="N of the measured whole video (ti2v-jax)")
    ap.add_argument("--torch-new-frames", type=int, default=None,
                    help="N of torch's measured video (default --new-frames; 0: none, extrapolate only)")
    ap.add_argument("--video-slides", default="pixel", help="comma list of slides to run whole videos for")
    ap.add_argument("--video-mode", default="scan", choices=["scan", "loop"],
                    help="ti2v-jax video: the library's one-program scan, or N calls of the frame program")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frame-repeats", type=int, default=1)
    ap.add_argument("--impls", default="jax,torch",
                    help="comma list of: jax, torch (the published loop), torch_tuned (the tuned peer)")
    ap.add_argument("--torch-device", default="auto")
    ap.add_argument("--torch-tuned-dtype", default="bfloat16", help="the tuned peer's dtype on GPU (CPU: float32)")
    ap.add_argument("--torch-compile-mode", default="auto",
                    help="the tuned peer's torch.compile mode: auto (GPU max-autotune-no-cudagraphs, CPU default), "
                         "default, max-autotune, max-autotune-no-cudagraphs, reduce-overhead, none (eager)")
    ap.add_argument("--tuned-eager-frame", action="store_true",
                    help="the tuned peer also times one latent-slide frame before compiling")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="stop each implementation's process this many seconds after this run's start "
                         "(what it measured until then is kept)")
    ap.add_argument("--weights", default=None,
                    help="weights dir: used if it holds a pipeline, else made there and kept (default: a temp dir)")
    ap.add_argument("--out", default=str(HERE / "out"))
    ap.add_argument("--tag", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return ap


def main():
    import signal

    ap = parser()
    args = ap.parse_args()
    # SIGTERM (e.g. `timeout`) as an exception, so that run_child stops the child's process group
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.video_slides = [s for s in args.video_slides.split(",") if s]
    if args.child:
        return child(args)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"{args.config}"
    tmp = None
    res = {"config": args.config, "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "command": "python " + " ".join(sys.argv), "args": vars(args)}
    t0 = time.perf_counter()
    start = time.monotonic()
    if args.weights is None:
        tmp = args.weights = tempfile.mkdtemp(prefix="ti2v_bench_")
    if not (Path(args.weights) / "model_index.json").is_file():
        import torch
        dev = "cuda" if torch.cuda.is_available() and args.torch_device != "cpu" else "cpu"
        res["params"] = make_weights(args.config, Path(args.weights), device=dev)
        del torch
    res["weights_s"] = time.perf_counter() - t0
    res["flops_per_pass"] = count_flops(args.config)
    try:
        import torch
        if torch.cuda.is_available():
            res["gpu"] = torch.cuda.get_device_name()
            res["peak_tflops"] = 989.0  # H100/H200 SXM dense bf16 datasheet
    except ImportError:
        pass
    print(f"weights ready in {res['weights_s']:.1f}s; flops/pass {res['flops_per_pass'] / 1e9:.1f} GFLOP", flush=True)

    def write():
        (out_dir / f"bench_{tag}.json").write_text(json.dumps(res, indent=1, default=str))
        (out_dir / f"bench_{tag}.md").write_text(table(res) + "\n")

    argv = [a for a in sys.argv[1:]]
    for impl in args.impls.split(","):
        key = {"jax": "jax", "torch": "torch", "torch_tuned": "torch_tuned"}[impl]
        cout = out_dir / f"child_{tag}_{impl}.json"
        cmd = [sys.executable, "-u", __file__, *argv, "--weights", args.weights, "--child", impl,
               "--child-out", str(cout)]
        t1 = time.perf_counter()
        left = None if args.deadline_s is None else args.deadline_s - (time.monotonic() - start)
        timed_out = run_child(cmd, left)
        res[key] = json.loads(cout.read_text()) if cout.is_file() else {"error": "no output"}
        if timed_out:
            res[key]["error"] = f"stopped at the deadline after {time.perf_counter() - t1:.0f} s (--deadline-s)"
        res[key]["process_wall_s"] = time.perf_counter() - t1
        write()
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    write()
    print(table(res))


if __name__ == "__main__":
    main()
