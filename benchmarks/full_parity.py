"""Full-size numerical parity: the real ModelScope 1.7B networks, random perturbed weights, fp32.

    python benchmarks/full_parity.py [--only unet,unetsd,vae,text,bf16] [--scale full|small] [--out FILE]

Each PyTorch twin is built from the shipped text-to-video-ms-1.7b configs
(`ti2v_jax.MS17B_CONFIGS`), every parameter perturbed (diffusers zero-inits some
layers), run in float32, its outputs kept as numpy, then written in its checkpoint
layout and freed. The Flax network is then obtained through the project's own
conversion/loading code (`ti2v_jax.loading.load` on a diffusers directory,
`weights.modelscope.convert_in_memory` on an original ModelScope release) and run
on the same inputs. Rows:

  unet    diffusers UNet3DConditionModel (unet.json), batch 2, different timesteps,
          K=16 frames, 32x32 latents, 77-token contexts of width 1024
  unetsd  the original ModelScope UNetSD (modelscope package, by path) at its real depth (2 res blocks
          per level), converted from the original layout; same inputs
  vae     diffusers AutoencoderKL (vae.json): encode (posterior mean, logvar) at
          256x256 and decode of 32x32 latents
  text    transformers CLIPTextModel (text_encoder.json: 23 layers, width 1024,
          vocab 49408, 77 positions), and the OpenCLIP-layout text tower (24 blocks,
          penultimate + ln_final) converted by weights/modelscope.py
  bf16    one U-Net pass with parameters and compute in bfloat16 (inputs cast at the
          call, output cast to float32) against the float32 JAX pass, same weights

Errors: max abs |a-b|, max-relative max|a-b| / max|ref|, norm-relative
||a-b|| / ||ref||. `--scale small` keeps every structure (levels, depth, block types,
context width 1024, vocab) with fewer channels/layers and smaller inputs, to debug
quickly. Output goes to stdout and is appended to `--out`.
Memory: one network at a time; the U-Net rows peak at about 2 x 5.6 GB while converting.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import jax
import jax.numpy as jnp
import torch
from flax import nnx

from ti2v_jax import MS17B_CONFIGS, loading
from ti2v_jax.weights import modelscope as ms

ROWS = ("unet", "unetsd", "vae", "text", "bf16")
TARGET = 1e-4
PERTURB = 0.02  # std of the Gaussian noise added to every parameter

# The release's model_cfg (configuration.json of text-to-video-ms-1.7b), as tests/test_modelscope.py has it.
REAL_MODEL_CFG = {"unet_in_dim": 4, "unet_dim": 320, "unet_y_dim": 768, "unet_context_dim": 1024, "unet_out_dim": 4,
                  "unet_dim_mult": [1, 2, 4, 4], "unet_num_heads": 8, "unet_head_dim": 64, "unet_res_blocks": 2,
                  "unet_attn_scales": [1, 0.5, 0.25], "unet_dropout": 0.1, "temporal_attention": "True",
                  "num_timesteps": 1000, "mean_type": "eps", "var_type": "fixed_small", "loss_type": "mse"}


def _shipped(name: str) -> dict:
    return json.loads((MS17B_CONFIGS / f"{name}.json").read_text())


def setup(scale: str) -> dict:
    """Configs and input sizes for `full` (the shipped configs) or `small` (same structure, narrower)."""
    if scale == "full":
        model_cfg = dict(REAL_MODEL_CFG)
        unet, vae, text = _shipped("unet"), _shipped("vae"), _shipped("text_encoder")
        return {"model_cfg": model_cfg, "unet": unet, "vae": vae, "text": text, "frames": 16, "latent": 32,
                "tokens": 77, "image": 256}
    # 4 levels, 2 res blocks, attention on the first 3, context 1024 (UNetSD hard-codes it), 8 temporal heads.
    model_cfg = dict(REAL_MODEL_CFG, unet_dim=64, unet_head_dim=32)
    unet = ms.unet_config(model_cfg)
    vae = dict(_shipped("vae"), block_out_channels=[32, 32, 64, 64], layers_per_block=1)
    text = dict(_shipped("text_encoder"), hidden_size=128, intermediate_size=512, num_attention_heads=2,
                num_hidden_layers=2)
    return {"model_cfg": model_cfg, "unet": unet, "vae": vae, "text": text, "frames": 4, "latent": 16, "tokens": 77,
            "image": 64}


# ---- helpers ------------------------------------------------------------------------

def source_revision() -> str:
    """The git commit the imported ti2v_jax comes from (FULL_PARITY_SOURCE overrides, e.g. for an export)."""
    import os
    import subprocess

    if os.environ.get("FULL_PARITY_SOURCE"):
        return os.environ["FULL_PARITY_SOURCE"]
    try:
        git = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                                        check=True).stdout.strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "ti2v_jax")
        return f"git {git('rev-parse', 'HEAD')}" + (" (ti2v_jax has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def plain(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def perturb_(module, seed: int):
    from helpers import perturb_ as _perturb

    return _perturb(module, scale=PERTURB, seed=seed).eval()


def free_torch(*_):
    gc.collect()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def errors(out, ref) -> dict:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    d = out - ref
    ref_max = float(np.abs(ref).max())
    err = float(np.abs(d).max())
    return {"ref_max": ref_max, "max_abs": err, "rel_max": err / ref_max,
            "rel_norm": float(np.linalg.norm(d) / np.linalg.norm(ref)), "finite": bool(np.isfinite(out).all())}


def write_diffusers_dir(root: Path, name: str, model) -> Path:
    """A diffusers pipeline directory holding one component (+ tokenizer, scheduler) for `loading.load`."""
    lib = "transformers" if name == "text_encoder" else "diffusers"
    index = {"_class_name": "TextToVideoSDPipeline", "_diffusers_version": "0.42.1",
             name: [lib, type(model).__name__], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    model.save_pretrained(root / name, safe_serialization=True)
    ms.write_clip_tokenizer(root / "tokenizer")
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text((MS17B_CONFIGS / "scheduler.json").read_text())
    return root


def write_modelscope_release(root: Path, model_cfg: dict, unet=None, clip=None) -> Path:
    """An original-layout release directory as tests/test_modelscope.py writes it; the networks not
    given are empty state dicts (the converter reads only the component asked for)."""
    from test_modelscope import _configuration

    root.mkdir(parents=True, exist_ok=True)
    (root / "configuration.json").write_text(json.dumps(_configuration(model_cfg), indent=2))
    torch.save(unet.state_dict() if unet is not None else {}, root / "text2video_pytorch_model.pth")
    torch.save({"state_dict": {}}, root / "VQGAN_autoencoder.pth")
    torch.save(clip.state_dict() if clip is not None else {}, root / "open_clip_pytorch_model.bin")
    return root


def modelscope_components(release: Path, name: str) -> loading.Components:
    """`loading.Components` of one network of an original release, converted in memory by
    weights/modelscope.py: through `loading.load` where it reads original releases, else
    `modelscope.convert_in_memory` and what `loading.load` does with a converted state."""
    if not hasattr(ms, "convert_in_memory"):
        return loading.load(release, components=(name,), tokenizer=False)
    from ti2v_jax.weights.components import COMPONENTS

    config, params = ms.convert_in_memory(release, dtype="float32", components=(name,))[name]
    g, _, rest = nnx.split(COMPONENTS[name].abstract(config), nnx.Param, ...)
    return loading.from_splits({name: (g, params, rest)}, {name: config})


def unet_inputs(s: dict, seed: int = 0):
    """(sample (B,C,F,h,w) torch layout, timesteps, context) as float32/int numpy."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 4, s["frames"], s["latent"], s["latent"])).astype(np.float32)
    t = np.array([999, 37], np.int64)
    ctx = rng.standard_normal((2, s["tokens"], 1024)).astype(np.float32)
    return x, t, ctx


def run_unet(c: loading.Components, x, t, ctx, dtype=jnp.float32) -> tuple[np.ndarray, float, float]:
    """eps in torch layout (float32 numpy), compile seconds, run seconds."""
    f = jax.jit(lambda p, x, t, c_: c.unet_apply(p, x, t, c_).astype(jnp.float32))
    args = (c.unet_params, jnp.asarray(x.transpose(0, 2, 3, 4, 1), dtype), jnp.asarray(t, jnp.int32),
            jnp.asarray(ctx, dtype))
    t0 = time.perf_counter()
    compiled = f.lower(*args).compile()
    t1 = time.perf_counter()
    out = np.asarray(jax.block_until_ready(compiled(*args)))
    t2 = time.perf_counter()
    return out.transpose(0, 4, 1, 2, 3), t1 - t0, t2 - t1


# ---- rows ---------------------------------------------------------------------------

class Runner:
    def __init__(self, s: dict, tmp: Path, log):
        self.s, self.tmp, self.log = s, tmp, log
        self.results: list[tuple[str, dict, float]] = []
        self._unet_dir = None
        self._unet_ref = None      # diffusers eps
        self._unet_jax32 = None    # our fp32 eps

    def record(self, name: str, e: dict, wall: float):
        self.results.append((name, e, wall))
        self.log(f"  -> {name}: max|ref| {e['ref_max']:.4g}, max abs err {e['max_abs']:.3e}, "
                 f"rel(max) {e['rel_max']:.3e}, rel(norm) {e['rel_norm']:.3e}, finite {e['finite']}, "
                 f"{wall:.0f} s, peak RSS {peak_rss_gib():.2f} GiB")

    # diffusers U-Net: torch reference + the saved directory (shared by `unet` and `bf16`).
    def _diffusers_unet(self, need_ref: bool):
        if self._unet_dir is not None and (self._unet_ref is not None or not need_ref):
            return
        from diffusers import UNet3DConditionModel

        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = perturb_(UNet3DConditionModel(**plain(self.s["unet"])), seed=1)
        n = sum(p.numel() for p in model.parameters())
        self.log(f"  diffusers UNet3DConditionModel: {n:,} parameters, built in {time.perf_counter() - t0:.0f} s")
        if need_ref:
            x, t, ctx = unet_inputs(self.s)
            t0 = time.perf_counter()
            with torch.no_grad():
                self._unet_ref = model(torch.from_numpy(x), torch.from_numpy(t),
                                       encoder_hidden_states=torch.from_numpy(ctx)).sample.numpy()
            self.log(f"  torch forward {tuple(x.shape)}, t={t.tolist()}, context {tuple(ctx.shape)}: "
                     f"{time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        self._unet_dir = write_diffusers_dir(self.tmp / "diffusers_unet", "unet", model)
        self.log(f"  save_pretrained: {time.perf_counter() - t0:.0f} s")
        del model
        free_torch()

    def _jax_unet32(self):
        if self._unet_jax32 is not None:
            return
        t0 = time.perf_counter()
        c = loading.load(self._unet_dir, components=("unet",), tokenizer=False)
        self.log(f"  loading.load (diffusers -> Flax, fp32): {time.perf_counter() - t0:.0f} s, "
                 f"peak RSS {peak_rss_gib():.2f} GiB")
        x, t, ctx = unet_inputs(self.s)
        self._unet_jax32, tc, tr = run_unet(c, x, t, ctx)
        self.log(f"  jax fp32: compile {tc:.0f} s, run {tr:.0f} s")
        del c
        jax.clear_caches()  # compiled programs and traces hold the parameters otherwise
        gc.collect()

    def unet(self):
        self._diffusers_unet(need_ref=True)
        self._jax_unet32()
        return {"unet (diffusers UNet3DConditionModel)": errors(self._unet_jax32, self._unet_ref)}

    def bf16(self):
        self._diffusers_unet(need_ref=False)
        self._jax_unet32()
        t0 = time.perf_counter()
        c = loading.load(self._unet_dir, components=("unet",), dtype="bfloat16", tokenizer=False)
        self.log(f"  loading.load (bf16 parameters): {time.perf_counter() - t0:.0f} s")
        x, t, ctx = unet_inputs(self.s)
        out, tc, tr = run_unet(c, x, t, ctx, dtype=jnp.bfloat16)
        self.log(f"  jax bf16: compile {tc:.0f} s, run {tr:.0f} s")
        del c
        jax.clear_caches()  # compiled programs and traces hold the parameters otherwise
        gc.collect()
        return {"unet bf16 vs fp32 JAX (deviation)": errors(out, self._unet_jax32)}

    def unetsd(self):
        from test_modelscope import _original

        cfg = self.s["model_cfg"]
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = perturb_(_original("unet_sd").UNetSD(
            in_dim=cfg["unet_in_dim"], dim=cfg["unet_dim"], y_dim=cfg["unet_y_dim"], context_dim=cfg["unet_context_dim"],
            out_dim=cfg["unet_out_dim"], dim_mult=cfg["unet_dim_mult"], num_heads=cfg["unet_num_heads"],
            head_dim=cfg["unet_head_dim"], num_res_blocks=cfg["unet_res_blocks"], attn_scales=cfg["unet_attn_scales"],
            dropout=cfg["unet_dropout"], temporal_attention=True), seed=2)
        n = sum(p.numel() for p in model.parameters())
        self.log(f"  original UNetSD: {n:,} parameters, built in {time.perf_counter() - t0:.0f} s")
        x, t, ctx = unet_inputs(self.s, seed=1)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx)).numpy()
        self.log(f"  torch forward: {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        release = write_modelscope_release(self.tmp / "release_unet", cfg, unet=model)
        self.log(f"  torch.save (original layout): {time.perf_counter() - t0:.0f} s")
        del model
        free_torch()
        t0 = time.perf_counter()
        c = modelscope_components(release, "unet")
        self.log(f"  modelscope.convert_in_memory (UNetSD -> Flax): {time.perf_counter() - t0:.0f} s, "
                 f"peak RSS {peak_rss_gib():.2f} GiB")
        out, tc, tr = run_unet(c, x, t, ctx)
        self.log(f"  jax fp32: compile {tc:.0f} s, run {tr:.0f} s")
        del c
        jax.clear_caches()  # compiled programs and traces hold the parameters otherwise
        gc.collect()
        return {"unet from original layout (original UNetSD)": errors(out, ref)}

    def vae(self):
        from diffusers import AutoencoderKL

        s = self.s
        torch.manual_seed(0)
        model = perturb_(AutoencoderKL(**plain(s["vae"])), seed=3)
        self.log(f"  diffusers AutoencoderKL: {sum(p.numel() for p in model.parameters()):,} parameters")
        rng = np.random.default_rng(2)
        img = rng.uniform(-1, 1, (2, 3, s["image"], s["image"])).astype(np.float32)
        f = 2 ** (len(s["vae"]["block_out_channels"]) - 1)
        z = rng.standard_normal((2, 4, s["image"] // f, s["image"] // f)).astype(np.float32)
        t0 = time.perf_counter()
        with torch.no_grad():
            post = model.encode(torch.from_numpy(img)).latent_dist
            ref_mean, ref_logvar = post.mean.numpy(), post.logvar.numpy()
            ref_dec = model.decode(torch.from_numpy(z)).sample.numpy()
        self.log(f"  torch encode {img.shape} + decode {z.shape}: {time.perf_counter() - t0:.0f} s")
        d = write_diffusers_dir(self.tmp / "diffusers_vae", "vae", model)
        del model, post
        free_torch()
        c = loading.load(d, components=("vae",), tokenizer=False)
        graphdef, params = c.vae
        enc = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
        dec = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
        t0 = time.perf_counter()
        mean, logvar = enc(params, jnp.asarray(img.transpose(0, 2, 3, 1)))
        out_dec = dec(params, jnp.asarray(z.transpose(0, 2, 3, 1)))
        jax.block_until_ready(out_dec)
        self.log(f"  jax encode + decode (compile and run): {time.perf_counter() - t0:.0f} s")
        # The loaded pure function is the same encoder, scaled by the config's scaling_factor.
        scaled = np.asarray(c.vae_encode(params, jnp.asarray(img.transpose(0, 2, 3, 1))))
        np.testing.assert_allclose(scaled, np.asarray(mean) * c.vae_scaling_factor, rtol=1e-5, atol=1e-6)
        tch = lambda a: np.asarray(a).transpose(0, 3, 1, 2)
        return {f"vae encode mean ({s['image']}x{s['image']})": errors(tch(mean), ref_mean),
                "vae encode logvar": errors(tch(logvar), ref_logvar),
                f"vae decode ({z.shape[2]}x{z.shape[3]} -> {s['image']}x{s['image']})": errors(tch(out_dec), ref_dec)}

    def text(self):
        from test_modelscope import OpenCLIPTwin
        from transformers import CLIPTextConfig, CLIPTextModel

        s = self.s
        cfg = s["text"]
        rng = np.random.default_rng(3)
        ids = rng.integers(0, cfg["vocab_size"], (2, cfg["max_position_embeddings"])).astype(np.int64)
        ids[:, 0] = 49406
        ids[0, 40] = 49407
        ids[0, 41:] = 0
        out = {}

        torch.manual_seed(0)
        hf = perturb_(CLIPTextModel(CLIPTextConfig(**{k: v for k, v in cfg.items()
                                                      if k not in ("architectures", "torch_dtype")})), seed=4)
        self.log(f"  transformers CLIPTextModel: {sum(p.numel() for p in hf.parameters()):,} parameters, "
                 f"{cfg['num_hidden_layers']} layers, width {cfg['hidden_size']}")
        with torch.no_grad():
            ref = hf(torch.from_numpy(ids)).last_hidden_state.numpy()
        d = write_diffusers_dir(self.tmp / "diffusers_text", "text_encoder", hf)
        del hf
        free_torch()
        c = loading.load(d, components=("text_encoder",), tokenizer=False)
        got = np.asarray(jax.jit(c.text_encode)(c.text_encoder_params, jnp.asarray(ids, jnp.int32)))
        out["text encoder (transformers CLIPTextModel)"] = errors(got, ref)
        del c
        jax.clear_caches()  # compiled programs and traces hold the parameters otherwise
        gc.collect()

        torch.manual_seed(0)
        clip = perturb_(OpenCLIPTwin(vocab=cfg["vocab_size"], width=cfg["hidden_size"],
                                     heads=cfg["num_attention_heads"], layers=cfg["num_hidden_layers"] + 1,
                                     context=cfg["max_position_embeddings"]), seed=5)
        self.log(f"  OpenCLIP-layout twin: {cfg['num_hidden_layers'] + 1} blocks (penultimate + ln_final used)")
        with torch.no_grad():
            ref = clip.encode_penultimate(torch.from_numpy(ids)).numpy()
        release = write_modelscope_release(self.tmp / "release_text", s["model_cfg"], clip=clip)
        del clip
        free_torch()
        c = modelscope_components(release, "text_encoder")
        assert c.configs["text_encoder"]["num_hidden_layers"] == cfg["num_hidden_layers"]
        got = np.asarray(jax.jit(c.text_encode)(c.text_encoder_params, jnp.asarray(ids, jnp.int32)))
        out["text encoder (OpenCLIP layout, original release)"] = errors(got, ref)
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows: {','.join(ROWS)}")
    ap.add_argument("--scale", choices=("full", "small"), default="full")
    ap.add_argument("--out", type=Path, help="also append the report to this file")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}; choose from {','.join(ROWS)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)

    def log(msg=""):
        print(msg, flush=True)
        if args.out:  # appended line by line: a row that finished is kept if a later one fails
            with args.out.open("a") as f:
                f.write(msg + "\n")

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    import diffusers
    import transformers

    log(f"# full_parity  {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    log(f"command: python {shlex.join(['benchmarks/full_parity.py', *(argv if argv is not None else sys.argv[1:])])}")
    log(f"machine: {cpu}, {jax.device_count()} x {jax.devices()[0].platform}, torch threads {torch.get_num_threads()}")
    log(f"source: {source_revision()}")
    log(f"versions: jax {jax.__version__}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, python {platform.python_version()}")
    s = setup(args.scale)
    log(f"scale: {args.scale} (unet block_out_channels {s['unet']['block_out_channels']}, "
        f"frames {s['frames']}, latents {s['latent']}x{s['latent']}, tokens {s['tokens']}, image {s['image']}); "
        f"weights perturbed by N(0, {PERTURB}^2); float32 unless stated")
    with tempfile.TemporaryDirectory(prefix="full_parity_") as tmp:
        runner = Runner(s, Path(tmp), log)
        for row in rows:
            log(f"[{row}]")
            t0 = time.perf_counter()
            res = getattr(runner, row)()
            wall = time.perf_counter() - t0
            for name, e in res.items():
                runner.record(name, e, wall)
    log("")
    log(f"{'row':52s} {'max|ref|':>10s} {'max abs err':>12s} {'rel (max)':>10s} {'rel (norm)':>10s} "
        f"{'< 1e-4':>7s} {'row wall s':>10s}")
    for name, e, wall in runner.results:
        ok = "n/a" if "bf16" in name else ("yes" if e["rel_max"] < TARGET and e["finite"] else "NO")
        log(f"{name:52s} {e['ref_max']:10.4g} {e['max_abs']:12.3e} {e['rel_max']:10.3e} {e['rel_norm']:10.3e} "
            f"{ok:>7s} {wall:10.0f}")
    log(f"peak host memory (ru_maxrss): {peak_rss_gib():.2f} GiB")
    log("")
    return 0


if __name__ == "__main__":
    sys.exit(main())
