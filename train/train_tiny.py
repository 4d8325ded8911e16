"""Train the tiny default text-to-video model on synthetic moving shapes (ti2v_jax.toy.synthetic).

    python train/train_tiny.py --workdir /tmp/ti2v_tiny                  # all stages, CPU profile
    python train/train_tiny.py --workdir /tmp/ti2v_tiny --profile gpu    # the profile the shipped model used
    python train/train_tiny.py --workdir /tmp/ti2v_tiny --stage export --export ti2v_jax/assets/default_model

Stages (each resumable: rerunning picks up from the last orbax checkpoint in --workdir):
  text   a FROZEN, randomly initialised tiny CLIPTextModel + a CLIP BPE tokenizer whose
         vocabulary holds every caption word whole (no training: the U-Net learns to read it);
  data   a fixed set of synthetic clips (seeded), uint8, cached in the workdir;
  vae    AutoencoderKL 32x32x3 -> 8x8x4: L2 reconstruction of a posterior sample + small KL;
         then scaling_factor = 1 / std of the posterior means (unit-variance latents);
  unet   UNet3DConditionModel, epsilon prediction, scaled_linear schedule (1000 steps),
         uniform timesteps, 10% of captions replaced by "" (classifier-free guidance), EMA;
         then, if the profile has a `finish`, a second U-Net stage from those EMA weights
         (the cpu profile's: guidance-consistency pairs, see stage_unet);
  export the EMA weights as a converted checkpoint directory (ti2v_jax.loading reads it).
Everything uses the project's own Flax classes, built from diffusers-style config dicts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from flax import nnx  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ti2v_jax.models.clip_text import CLIPTextModel  # noqa: E402
from ti2v_jax.models.unet3d import UNet3DConditionModel  # noqa: E402
from ti2v_jax.models.vae import AutoencoderKL  # noqa: E402
from ti2v_jax.sampling.schedule import alphas_cumprod, q_sample  # noqa: E402
from ti2v_jax.tokenizer import load_tokenizer, tokenize  # noqa: E402
from ti2v_jax.toy import synthetic  # noqa: E402

NUM_FRAMES = synthetic.NUM_FRAMES  # K
SIZE = synthetic.SIZE


def train_attention():
    """Same math as the inference kernels; on CPU XLA's plain attention differentiates faster
    than the blocked inference formulation, so training builds its models with it there."""
    return "xla" if jax.default_backend() == "cpu" else None


VAE_CONFIG = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64], "layers_per_block": 1, "act_fn": "silu", "latent_channels": 4,
    "norm_num_groups": 8, "sample_size": SIZE, "scaling_factor": 1.0,  # set after training
}
UNET_CONFIG = {
    "_class_name": "UNet3DConditionModel", "sample_size": SIZE // 4, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D"],
    "up_block_types": ["CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "cross_attention_dim": 32, "attention_head_dim": 4,
}
TEXT_CONFIG = {
    "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": None,  # from tokenizer
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
    "max_position_embeddings": 77, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
}
SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1,
}

# Step counts, batch sizes, learning rates, data and loss options. "cpu" is the whole
# training from scratch on this repo's 2-core CPU in under 60 minutes (see train/README.md;
# its U-Net stages stop at their `unet_minutes` if the machine is slower); "gpu" is the
# profile runs 1-2 of the earlier shipped weights used.
# `finish`: a second U-Net stage ("unet_finish") that starts from the first's EMA weights
# with a fresh optimizer, its settings being the profile's with these overrides; the cpu
# profile's adds guidance-consistency pairs (see stage_unet), which keep guidance 9 from
# pinching squares into stars (train/README.md).
PROFILES = {
    "cpu": dict(clips=16384, vae_steps=1400, vae_batch=32, vae_lr=4e-3, unet_steps=1800, unet_batch=16,
                unet_lr=3e-3, hold_prob=0.8, min_hold=2, t_weight_cap=10.0, last_frame_weight=7.0, unet_minutes=40.0,
                finish=dict(unet_steps=350, unet_lr=1e-3, consistency_pairs=4, consistency_weight=1.0,
                            unet_minutes=9.0),
                chunk=10),
    "gpu": dict(clips=32768, vae_steps=4000, vae_batch=128, unet_steps=30000, unet_batch=64, chunk=100),
    "smoke": dict(clips=64, vae_steps=4, vae_batch=8, unet_steps=4, unet_batch=2, chunk=2,
                  finish=dict(unet_steps=2, consistency_pairs=1, consistency_weight=1.0)),
}
VAE_LR, VAE_KL = 1e-3, 1e-6
UNET_LR, UNET_WARMUP, EMA_DECAY, TEXT_DROPOUT = 5e-4, 500, 0.999, 0.1


def log(workdir, **rec):
    with open(Path(workdir) / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


# --- text -------------------------------------------------------------------

def stage_text(workdir, seed):
    """Tokenizer + frozen random text encoder; the contexts of every caption and of ""."""
    wd = Path(workdir)
    tok_dir = wd / "tokenizer"
    if not (tok_dir / "vocab.json").is_file():
        synthetic.write_caption_tokenizer(tok_dir)
    tok = load_tokenizer(tok_dir)
    cfg = dict(TEXT_CONFIG, vocab_size=len(tok))
    model = CLIPTextModel(cfg, attention=train_attention(), rngs=nnx.Rngs(seed + 1000))
    captions = synthetic.all_captions() + [""]
    ids = tokenize(tok, captions)
    contexts = np.asarray(jax.jit(lambda m, i: m(i))(model, ids))
    # The contexts must tell captions apart (different words -> different vectors).
    flat = contexts.reshape(len(captions), -1)
    d = np.linalg.norm(flat[:, None] - flat[None], axis=-1) + np.eye(len(captions)) * 1e9
    assert d.min() > 1.0, f"text contexts too close: {d.min()}"
    return model, cfg, captions, contexts


# --- data -------------------------------------------------------------------

def _render_chunk(args):
    seed, n, hold_prob, min_hold = args
    videos, captions, _ = synthetic.make_batch(seed, n, hold_prob=hold_prob, min_hold=min_hold)
    return videos, captions


def stage_data(workdir, n_clips, seed, hold_prob=synthetic.HOLD_PROB, min_hold=1):
    """n_clips synthetic clips (uint8) and their caption indices, cached as .npz."""
    path = Path(workdir) / f"data_{n_clips}_{seed}_{hold_prob}_{min_hold}.npz"
    if path.is_file():
        d = np.load(path)
        return d["videos"], d["caption_ids"]
    chunk = 256
    jobs = [(seed * 1_000_003 + i, min(chunk, n_clips - i * chunk), hold_prob, min_hold)
            for i in range((n_clips + chunk - 1) // chunk)]
    workers = min(len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        parts = list(tqdm(ex.map(_render_chunk, jobs), total=len(jobs), desc="data"))
    videos = np.concatenate([p[0] for p in parts])
    index = {c: i for i, c in enumerate(synthetic.all_captions())}
    caption_ids = np.asarray([index[c] for p in parts for c in p[1]], np.int32)
    np.savez(path, videos=videos, caption_ids=caption_ids)
    return videos, caption_ids


# --- generic training loop --------------------------------------------------

def train_loop(workdir, name, model, tx, loss_fn, data, steps, chunk, key, *, ema_decay=None, ckpt_every=None,
               max_minutes=None):
    """Jitted training steps, tqdm, JSONL log (one record per `chunk` steps), resumable orbax checkpoints.

    loss_fn(model, key, data, step) -> scalar; `data` (a pytree of arrays) is passed to the jitted
    step as an argument, not baked into the program as a constant. Returns the trained (or
    EMA) parameters as an nnx.State. max_minutes: stop early (checkpointing) once this much
    wall time has passed; logged.
    """
    graphdef, params = nnx.split(model, nnx.Param)
    opt_state = tx.init(params)
    state = {"params": params, "opt": opt_state, "ema": params if ema_decay else None,
             "step": jnp.zeros((), jnp.int32)}
    mgr = ocp.CheckpointManager(Path(workdir, f"ckpt_{name}").absolute(),
                                options=ocp.CheckpointManagerOptions(max_to_keep=2))
    if mgr.latest_step() is not None:
        state = mgr.restore(mgr.latest_step(), args=ocp.args.StandardRestore(state))
        print(f"{name}: resumed at step {int(state['step'])}")

    # One jitted step, called `chunk` times from Python (dispatch is asynchronous). Not a
    # lax.scan over steps: on XLA:CPU a scanned training step ran 5x slower (7.8 vs 1.7 s
    # per U-Net step at batch 16, this machine).
    @jax.jit
    def one(state, k, data):
        k = jax.random.fold_in(k, state["step"])
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), k, data, state["step"]))(
            state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = state["ema"]
        if ema is not None:
            n = state["step"].astype(jnp.float32)
            d = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
            ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        return {"params": params, "opt": opt, "ema": ema, "step": state["step"] + 1}, loss

    def run_chunk(state, k):
        losses = []
        for _ in range(chunk):
            state, loss = one(state, k, data)
            losses.append(loss)
        return state, jnp.stack(losses)

    start = int(state["step"])
    t0 = time.time()
    bar = tqdm(total=steps, initial=start, desc=name)
    ckpt_every = ckpt_every or max(chunk, steps // 10)
    while int(state["step"]) < steps:
        state, losses = run_chunk(state, jax.random.fold_in(key, int(state["step"])))
        step = int(state["step"])
        loss = float(jnp.mean(losses))
        bar.update(chunk)
        bar.set_postfix(loss=f"{loss:.4f}")
        log(workdir, stage=name, step=step, loss=loss, wall_s=round(time.time() - t0, 1))
        out_of_time = max_minutes is not None and time.time() - t0 > 60 * max_minutes
        if step % ckpt_every < chunk or step >= steps or out_of_time:
            mgr.save(step, args=ocp.args.StandardSave(state))
        if out_of_time:
            print(f"{name}: stopped by the time limit ({max_minutes} min) at step {step} of {steps}")
            log(workdir, stage=name, stopped_early_at=step, planned_steps=steps)
            break
    bar.close()
    mgr.wait_until_finished()
    mgr.close()
    print(f"{name}: {int(state['step']) - start} steps in {time.time() - t0:.0f} s")
    return state["ema"] if ema_decay else state["params"], graphdef, int(state["step"])


# --- VAE --------------------------------------------------------------------

def stage_vae(workdir, videos, prof, seed):
    frames = jnp.asarray(videos.reshape((-1,) + videos.shape[2:]))  # uint8 (N*F, H, W, 3)
    model = AutoencoderKL(VAE_CONFIG, attention=train_attention(), rngs=nnx.Rngs(seed + 2000))
    batch = prof["vae_batch"]

    def loss_fn(vae, k, frames, step):
        ki, kz = jax.random.split(k)
        x = frames[jax.random.randint(ki, (batch,), 0, frames.shape[0])].astype(jnp.float32) / 127.5 - 1.0
        mean, logvar = vae.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(kz, mean.shape)
        rec = jnp.mean((vae.decode(z) - x) ** 2)
        kl = 0.5 * jnp.mean(jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)))
        return rec + VAE_KL * kl

    lr = prof.get("vae_lr", VAE_LR)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(100, prof["vae_steps"] // 10 + 1),
                                                       prof["vae_steps"], lr * 0.05),
                     weight_decay=0.0)
    params, graphdef, _ = train_loop(workdir, "vae", model, tx, loss_fn, frames, prof["vae_steps"], prof["chunk"],
                                  jax.random.key(seed + 2001))
    vae = nnx.merge(graphdef, params)
    # Scaling factor: unit variance of the diffusion-space latents (as SD's 0.18215 was chosen).
    enc = jax.jit(lambda m, x: m.encode(x.astype(jnp.float32) / 127.5 - 1.0))
    sample = frames[: min(4096, frames.shape[0])]
    means, errs = [], []
    for i in range(0, sample.shape[0], 512):
        m, _ = enc(vae, sample[i:i + 512])
        means.append(np.asarray(m))
        rec = jax.jit(lambda m_, z: m_.decode(z))(vae, m)
        x = sample[i:i + 512].astype(jnp.float32) / 127.5 - 1.0
        errs.append(float(jnp.mean(jnp.abs(jnp.clip(rec, -1, 1) - x))) * 127.5)
    sf = float(1.0 / np.std(np.concatenate(means)))
    log(workdir, stage="vae_done", scaling_factor=sf, recon_mae_uint8=float(np.mean(errs)))
    print(f"vae: scaling_factor={sf:.4f}, reconstruction MAE {np.mean(errs):.2f} / 255")
    return vae, dict(VAE_CONFIG, scaling_factor=round(sf, 6))


# --- U-Net ------------------------------------------------------------------

def encode_dataset(vae, sf, videos):
    enc = jax.jit(lambda m, x: m.encode(x.astype(jnp.float32) / 127.5 - 1.0)[0] * sf)
    n, f = videos.shape[:2]
    flat = videos.reshape((n * f,) + videos.shape[2:])
    out = [np.asarray(enc(vae, jnp.asarray(flat[i:i + 2048]))) for i in range(0, flat.shape[0], 2048)]
    lat = np.concatenate(out)
    return lat.reshape((n, f) + lat.shape[1:])


def timestep_weights(abar, cap):
    """Per-timestep loss weights from alpha_bar: min(1 / alpha_bar(t), cap), normalised to mean 1 (cap None: uniform).

    Epsilon-prediction weighs an error in the predicted clean video by alpha_bar / (1 - alpha_bar),
    so at high noise, where the motion a caption asks for must be decided, a wrong direction
    costs almost nothing. 1 / alpha_bar (v-prediction's weighting of the epsilon loss), capped,
    moves training signal there without changing the parametrisation the sampler uses.
    """
    w = jnp.ones_like(abar) if cap is None else jnp.minimum(1.0 / abar, cap)
    return w / jnp.mean(w)


def stage_unet(workdir, latents, caption_ids, contexts, prof, seed, init=None, name="unet"):
    lat = jnp.asarray(latents)
    cap = jnp.asarray(caption_ids)
    ctx = jnp.asarray(contexts)          # (73, 77, D); the last row is ""
    empty = ctx.shape[0] - 1
    abar = alphas_cumprod()
    weights = timestep_weights(abar, prof.get("t_weight_cap"))
    # Uniform weighting for the first `t_weight_after` of the planned steps (content and shape
    # are learned at low noise), the capped weighting after (motion, decided at high noise).
    weight_from = int(prof.get("t_weight_after", 0.0) * prof["unet_steps"])
    # Per-frame loss weights, mean 1: the last frame weighted `last_frame_weight` times the others.
    # TI2V-Zero only ever uses the U-Net's prediction for the last frame of the window (the queue
    # frames are replaced by their inversions at every step).
    fw = np.ones(NUM_FRAMES, np.float32)
    fw[-1] = prof.get("last_frame_weight", 1.0)
    frame_w = jnp.asarray(fw / fw.mean())[None, :, None, None, None]
    model = UNet3DConditionModel(UNET_CONFIG, attention=train_attention(), rngs=nnx.Rngs(seed + 3000))
    if init is not None:  # fine-tune: start from these weights (fresh optimizer)
        nnx.update(model, nnx.state(init, nnx.Param))
    batch = prof["unet_batch"]
    text_dropout = prof.get("text_dropout", TEXT_DROPOUT)

    # Guidance consistency (`consistency_pairs` P > 0): P of the batch's clips are drawn at low
    # noise (t < `consistency_t`) and denoised twice, with their caption and with "", and the
    # squared difference of the two predictions is added to the loss (weight
    # `consistency_weight`). At such noise levels the caption is determined by the video, so
    # the ideal conditional and unconditional predictions coincide; an undertrained model's
    # do not, and guidance multiplies the difference (at g=9 it pinches squares into stars).
    pairs = prof.get("consistency_pairs", 0)
    cons_w, cons_t = prof.get("consistency_weight", 0.0), prof.get("consistency_t", 400)
    single = batch - 2 * pairs     # batch places: single clips, then the pairs' captioned and "" halves
    paired, uncond = slice(single, batch - pairs), slice(batch - pairs, batch)

    def loss_fn(unet, k, data, step):
        lat, cap, ctx = data
        ki, kt, kn, kd = jax.random.split(k, 4)
        idx = jax.random.randint(ki, (batch - pairs,), 0, lat.shape[0])
        t = jax.random.randint(kt, (batch - pairs,), 0, 1000)
        c = jnp.where(jax.random.uniform(kd, (batch - pairs,)) < text_dropout, empty, cap[idx])
        if pairs:  # the last P clips: low t, caption and "" both
            t = t.at[paired].set(jax.random.randint(jax.random.fold_in(kt, 1), (pairs,), 0, cons_t))
            c = c.at[paired].set(cap[idx[paired]])
            idx, t = jnp.concatenate([idx, idx[paired]]), jnp.concatenate([t, t[paired]])
            c = jnp.concatenate([c, jnp.full((pairs,), empty)])
        x0 = lat[idx]
        eps = jax.random.normal(kn, x0.shape)
        if pairs:  # the same noise for both halves of a pair
            eps = eps.at[uncond].set(eps[paired])
        xt = q_sample(x0, t, eps, abar)
        w = jnp.where(step >= weight_from, weights[t], 1.0)
        pred = unet(xt, t, ctx[c])
        loss = jnp.mean(w * jnp.mean(frame_w * (pred - eps) ** 2, axis=(1, 2, 3, 4)))
        if pairs:
            loss = loss + cons_w * jnp.mean(frame_w * (pred[paired] - pred[uncond]) ** 2)
        return loss

    lr = prof.get("unet_lr", UNET_LR)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(UNET_WARMUP, prof["unet_steps"] // 10 + 1),
                                               prof["unet_steps"], lr * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.0))
    params, graphdef, done = train_loop(workdir, name, model, tx, loss_fn, (lat, cap, ctx), prof["unet_steps"],
                                        prof["chunk"],
                                        jax.random.key(seed + 3001), ema_decay=EMA_DECAY,
                                        max_minutes=prof.get("unet_minutes"))
    return nnx.merge(graphdef, params), done


# --- export -----------------------------------------------------------------

def export(dst, unet, vae, vae_cfg, text, text_cfg, tok_dir, meta):
    from ti2v_jax.weights.checkpoint import save_converted

    unet_cfg = dict(UNET_CONFIG)
    text_cfg = {k: v for k, v in text_cfg.items()}
    out = save_converted(dst, {"unet": unet, "vae": vae, "text_encoder": text},
                         {"unet": unet_cfg, "vae": vae_cfg, "text_encoder": text_cfg},
                         tokenizer_dir=tok_dir, scheduler_config=SCHEDULER_CONFIG, dtype="float32",
                         overwrite=True, num_frames=NUM_FRAMES, training=meta)
    print(f"exported to {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/ti2v_tiny", help="checkpoints, cached data, log.jsonl")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--stage", choices=["all", "vae", "unet", "export"], default="all",
                   help="run up to and including this stage ('all' = vae, unet, export)")
    p.add_argument("--export", default=None, help="converted checkpoint directory to write "
                   "(default: WORKDIR/default_model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="fine-tune: an exported model directory whose tokenizer, "
                   "text encoder and VAE are kept and whose U-Net weights start the U-Net stage")
    p.add_argument("--unet-steps", type=int, default=None, help="override the profile's U-Net steps")
    p.add_argument("--unet-lr", type=float, default=None, help="override the U-Net peak learning rate")
    p.add_argument("--clips", type=int, default=None, help="override the profile's number of training clips")
    p.add_argument("--hold-prob", type=float, default=None,
                   help=f"fraction of clips that rest before moving (default {synthetic.HOLD_PROB})")
    p.add_argument("--min-hold", type=int, default=None, help="shortest rest, frames (default 1)")
    p.add_argument("--unet-batch", type=int, default=None, help="override the profile's U-Net batch (clips)")
    p.add_argument("--t-weight-cap", type=float, default=None,
                   help="weight the U-Net loss at timestep t by min(1/alpha_bar(t), CAP) (mean 1); "
                   "default: the profile's (uniform if unset)")
    p.add_argument("--t-weight-after", type=float, default=None,
                   help="fraction of the U-Net steps trained with uniform weighting before the "
                   "--t-weight-cap weighting applies (default: the profile's, else 0)")
    p.add_argument("--last-frame-weight", type=float, default=None,
                   help="U-Net loss weight of the window's last frame relative to the others (default 1)")
    p.add_argument("--text-dropout", type=float, default=None,
                   help=f"fraction of U-Net training clips given the empty caption (default: the profile's, "
                        f"else {TEXT_DROPOUT})")
    p.add_argument("--consistency-pairs", type=int, default=None,
                   help="clips per U-Net batch drawn at low noise and denoised with their caption and with \"\" "
                        "(each takes two batch places); their predictions' squared difference is added to the loss "
                        "(default: the profile's, else 0)")
    p.add_argument("--consistency-weight", type=float, default=None, help="weight of that difference")
    p.add_argument("--consistency-t", type=int, default=None, help="the pairs' timesteps are below this (default 400)")
    p.add_argument("--unet-minutes", type=float, default=None,
                   help="wall-time cap for the U-Net stage (stops early, checkpointed, logged); "
                   "default: the profile's (none if unset)")
    p.add_argument("--finish-steps", type=int, default=None,
                   help="steps of the guidance-consistency stage after the U-Net stage (0: none; "
                   "default: the profile's, else 0)")
    p.add_argument("--finish-minutes", type=float, default=None, help="wall-time cap for that stage")
    p.add_argument("--vae-steps", type=int, default=None, help="override the profile's VAE steps")
    p.add_argument("--vae-lr", type=float, default=None, help=f"override the VAE peak learning rate "
                   f"(default: the profile's, else {VAE_LR})")
    a = p.parse_args(argv)
    prof = dict(PROFILES[a.profile])
    for name in ("unet_steps", "unet_lr", "clips", "hold_prob", "min_hold", "unet_batch", "t_weight_cap",
                 "t_weight_after", "last_frame_weight", "text_dropout", "consistency_pairs", "consistency_weight",
                 "consistency_t", "unet_minutes", "vae_steps", "vae_lr"):
        if getattr(a, name) is not None:  # the options that override the profile
            prof[name] = getattr(a, name)
    finish = dict(prof.pop("finish", {}))
    for name in ("steps", "minutes"):
        if getattr(a, f"finish_{name}") is not None:
            finish[f"unet_{name}"] = getattr(a, f"finish_{name}")
    if finish.get("unet_steps", 0) > 0:
        prof["finish"] = finish
    # The finish stage's settings: the profile's, with its overrides (None: no finish stage).
    finish_prof = {**prof, **finish} if "finish" in prof else None
    for name, stage in (("U-Net", prof), ("finish", finish_prof)):  # checked before hours of training
        if stage is not None and 2 * stage.get("consistency_pairs", 0) > stage["unet_batch"]:
            p.error(f"consistency_pairs {stage['consistency_pairs']} (the {name} stage): each pair takes two "
                    f"places of the U-Net batch ({stage['unet_batch']})")
    wd = Path(a.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    print(f"devices: {jax.devices()}; profile {a.profile}: {prof}")

    videos, caption_ids = stage_data(wd, prof["clips"], a.seed, prof.get("hold_prob", synthetic.HOLD_PROB),
                                     prof.get("min_hold", 1))
    init_unet = None
    if a.init_from:
        # Fine-tuning: the text encoder, tokenizer and VAE of an exported model, unchanged.
        from ti2v_jax.weights.checkpoint import load_component
        from ti2v_jax.weights.layout import read_config
        src = Path(a.init_from)
        tok_dir = wd / "tokenizer"
        if not tok_dir.is_dir():
            shutil.copytree(src / "tokenizer", tok_dir)
        text, text_cfg = load_component(src, "text_encoder"), read_config(src, "text_encoder")
        vae, vae_cfg = load_component(src, "vae"), read_config(src, "vae")
        init_unet = load_component(src, "unet")
        ids = tokenize(load_tokenizer(tok_dir), synthetic.all_captions() + [""])
        contexts = np.asarray(jax.jit(lambda m, i: m(i))(text, ids))
        t_data = time.time() - t_start
        t_vae = t_data
    else:
        text, text_cfg, captions, contexts = stage_text(wd, a.seed)
        t_data = time.time() - t_start
        vae, vae_cfg = stage_vae(wd, videos, prof, a.seed)
        t_vae = time.time() - t_start
    if a.stage == "vae":
        return
    latents = encode_dataset(vae, vae_cfg["scaling_factor"], videos)
    print(f"latents {latents.shape}, std {latents.std():.3f}")
    unet, unet_steps_done = stage_unet(wd, latents, caption_ids, contexts, prof, a.seed, init_unet)
    finish_steps_done = 0
    if finish_prof is not None:
        unet, finish_steps_done = stage_unet(wd, latents, caption_ids, contexts, finish_prof, a.seed, unet,
                                             name="unet_finish")
    t_unet = time.time() - t_start
    if a.stage == "unet":
        return
    meta = dict(script="train/train_tiny.py", profile=a.profile, seed=a.seed, **prof, unet_steps_done=unet_steps_done,
                finish_steps_done=finish_steps_done,
                init_from=a.init_from,
                devices=str(jax.devices()[0].device_kind), wall_s_data=round(t_data),
                wall_s_vae=round(t_vae - t_data), wall_s_unet=round(t_unet - t_vae),
                wall_s_total=round(time.time() - t_start),
                data="ti2v_jax.toy.synthetic (stream TRAIN)")
    export(a.export or wd / "default_model", unet, vae, vae_cfg, text, text_cfg, wd / "tokenizer", meta)
    log(wd, stage="done", wall_s=round(time.time() - t_start), **{k: v for k, v in meta.items() if k != "data"})
    print(f"total wall time {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
