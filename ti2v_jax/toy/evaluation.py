"""Measure image-to-video results on synthetic shapes: fidelity, motion, smoothness.

The synthetic world (ti2v_jax.toy.synthetic) has one object on a plain background, so
a video can be read back with simple image analysis instead of a learned metric:

  analyze_frame(frame)  -> Detection(found, x, y, area, color, shape)
  video_metrics(video, start, direction) -> dict of per-video numbers
  summarize(rows)       -> means over videos

Detection: the background is the median of the border pixels; the object is every
pixel that differs from it by more than 48 levels (max over channels); its centroid
is the mask's centre of mass, its colour the nearest `synthetic.COLORS` entry to the
mean of its pixels, its shape the bounding-box fill ratio (square ~1, circle ~0.79,
triangle ~0.5).

`run_variant` runs one sampler variant (the replacing baseline, or repeat-and-slide
with/without DDPM inversion and R resampling passes) on a batch of start images
with the loaded default model; `benchmarks/ablation.py` tabulates them.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ti2v_jax.toy import synthetic

_THRESHOLD = 48
_MIN_AREA = 6
_COLOR_NAMES = list(synthetic.COLORS)
_COLOR_TABLE = np.asarray(list(synthetic.COLORS.values()), np.float32)
_UNIT = {d: np.asarray(v, np.float32) for d, v in synthetic.DIRECTIONS.items()}


@dataclasses.dataclass(frozen=True)
class Detection:
    found: bool
    x: float = float("nan")
    y: float = float("nan")
    area: int = 0
    color: str | None = None
    shape: str | None = None


def analyze_frame(frame) -> Detection:
    """Find the single object in a (H, W, 3) uint8 frame."""
    f = np.asarray(frame, np.float32)
    border = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
    bg = np.median(border, axis=0)
    mask = np.abs(f - bg).max(axis=-1) > _THRESHOLD
    area = int(mask.sum())
    if area < _MIN_AREA:
        return Detection(False, area=area)
    ys, xs = np.nonzero(mask)
    mean_rgb = f[mask].mean(axis=0)
    color = _COLOR_NAMES[int(np.argmin(((_COLOR_TABLE - mean_rgb) ** 2).sum(-1)))]
    fill = area / float((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    shape = "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"
    return Detection(True, float(xs.mean() + 0.5), float(ys.mean() + 0.5), area, color, shape)


def direction_of(displacement, min_px: float = 3.0) -> str | None:
    """The one of the 4 directions closest to a (dx, dy) displacement; None if shorter than min_px."""
    d = np.asarray(displacement, np.float32)
    if not np.all(np.isfinite(d)) or np.linalg.norm(d) < min_px:
        return None
    return max(_UNIT, key=lambda k: float(_UNIT[k] @ d))


def video_metrics(video, color: str, shape: str, direction: str, *, first: int = 3) -> dict:
    """Numbers for one video (F, H, W, 3) uint8 whose frame 0 is the given start image.

    fidelity over the first `first` generated frames: object found with the start's
    colour / shape, and the centroid's distance from where it was in the start image;
    motion: net displacement start -> last frame, its direction, and the distance moved
    along the prompted direction; smoothness: centroid steps between consecutive frames
    (a "jump" is a step over 6 px: the data moves 1.5-2.5 px per frame), and the mean
    absolute pixel change between consecutive frames.
    """
    dets = [analyze_frame(fr) for fr in video]
    start = dets[0]
    gen = dets[1:]
    head = gen[:first]
    found = np.array([d.found for d in gen])
    xy = np.array([[d.x, d.y] for d in dets], np.float32)
    ok_xy = np.array([d.found for d in dets])
    steps = np.linalg.norm(np.diff(xy, axis=0), axis=-1)
    steps_ok = ok_xy[1:] & ok_xy[:-1]
    last = max((i for i, d in enumerate(dets) if d.found), default=0)
    disp = xy[last] - xy[0] if start.found and last > 0 else np.array([np.nan, np.nan])
    moved = direction_of(disp)
    frames = np.asarray(video, np.float32)
    return {
        "start_found": start.found,
        "found": float(found.mean()),
        "color_first": float(np.mean([d.found and d.color == color for d in head])),
        "shape_first": float(np.mean([d.found and d.shape == shape for d in head])),
        "pos_err_first": float(np.linalg.norm(xy[1] - xy[0])) if dets[1].found and start.found else float("nan"),
        "color_all": float(np.mean([d.found and d.color == color for d in gen])),
        "moved": moved,
        "direction_ok": moved == direction,
        "along_px": float(disp @ _UNIT[direction]) if np.all(np.isfinite(disp)) else float("nan"),
        "max_step_px": float(steps[steps_ok].max()) if steps_ok.any() else float("nan"),
        "jumps": float(np.mean(steps[steps_ok] > 6.0)) if steps_ok.any() else 1.0,
        "frame_diff": float(np.abs(np.diff(frames, axis=0)).mean()),
    }


def summarize(rows: list[dict]) -> dict:
    """Means over videos (nan-aware); direction accuracy as a fraction."""
    out = {}
    for k in ("found", "color_first", "shape_first", "pos_err_first", "color_all", "direction_ok", "along_px",
              "max_step_px", "jumps", "frame_diff"):
        out[k] = float(np.nanmean([float(r[k]) for r in rows]))
    out["n"] = len(rows)
    return out


# --- evaluation cases -------------------------------------------------------

def eval_cases(n: int, seed: int = 0, *, num_frames: int = synthetic.NUM_FRAMES):
    """n held-out start images with prompts: (images (n,H,W,3) uint8, prompts, specs).

    Drawn from the EVAL seed stream (training uses TRAIN), directions cycling through
    all four so each is equally represented; each start leaves room to move K-1 steps.
    """
    specs = []
    rng = np.random.default_rng([synthetic.EVAL, seed, 7])
    for i in range(n):
        s = synthetic.sample_specs(seed * 100_003 + i, 1, num_frames=num_frames, hold_prob=0.0,
                                   stream=synthetic.EVAL)[0]
        direction = list(synthetic.DIRECTIONS)[i % 4]
        # Re-draw the start so it has room in the forced direction.
        travel = 2.5 * (num_frames - 1)
        dx, dy = synthetic.DIRECTIONS[direction]
        lo, hi = s.radius + 0.5, synthetic.SIZE - s.radius - 0.5
        travel = min(travel, hi - lo - 1.0)
        pos = [rng.uniform(lo - min(d, 0) * travel, hi - max(d, 0) * travel) for d in (dx, dy)]
        specs.append(dataclasses.replace(s, direction=direction, x0=float(pos[0]), y0=float(pos[1])))
    images = np.stack([synthetic.render(s, 1)[0] for s in specs])
    return images, [s.caption for s in specs], specs


# --- running the method variants -----------------------------------------------

VARIANTS = {
    "replacing baseline": dict(kind="replacing"),
    "repeat-and-slide, no inversion (R=0)": dict(kind="ti2v", ddpm_inversion=False, resample_iters=0),
    "+ DDPM inversion (R=0)": dict(kind="ti2v", ddpm_inversion=True, resample_iters=0),
    "+ resampling R=2": dict(kind="ti2v", ddpm_inversion=True, resample_iters=2),
    "+ resampling R=4 (full method)": dict(kind="ti2v", ddpm_inversion=True, resample_iters=4),
}


def contexts(model, prompts):
    """(text contexts (B,T,D), empty-prompt contexts (B,T,D)) from a loaded checkpoint."""
    return _pipeline(model, synthetic.NUM_FRAMES).contexts(prompts)


def _pipeline(model, num_frames):
    from ti2v_jax.pipeline import TI2VZeroPipeline

    return TI2VZeroPipeline(model, num_frames=num_frames)


def run_variant(model, images, prompts, *, kind="ti2v", num_frames=synthetic.NUM_FRAMES, num_new_frames=None,
                num_steps=10, guidance_scale=9.0, resample_iters=4, ddpm_inversion=True, slide="pixel", seed=0):
    """Videos (B, 1 + N, H, W, 3) uint8 (start image first) for one variant, through the pipeline.

    kind="ti2v": TI2V-Zero repeat-and-slide (N = num_new_frames, default K-1);
    kind="replacing": the replacing baseline, one pass of K frames (frame 0 is then
    the model's reconstruction of the image; we show the given image in its place).
    Case i's noise comes from its own key `jax.random.split(jax.random.key(seed), B)[i]`
    (= fold_in(key, i): the keys the README's figures were made with).
    """
    if kind not in ("ti2v", "replacing"):
        raise ValueError(f"kind must be 'ti2v' or 'replacing', got {kind!r}")
    pipe = _pipeline(model, num_frames)
    return pipe(list(np.asarray(images)), list(prompts), num_new_frames=num_new_frames or num_frames - 1,
                num_inference_steps=num_steps, resample_iters=resample_iters, guidance_scale=guidance_scale,
                ddpm_inversion=ddpm_inversion, slide=slide, baseline=kind == "replacing",
                key=jax.random.split(jax.random.key(seed), len(prompts))).frames


def evaluate(model, n_cases=32, *, seed=0, variants=VARIANTS, batch=None, **kw):
    """{variant name: summary dict} over `n_cases` held-out start images."""
    images, prompts, specs = eval_cases(n_cases, seed)
    results, videos = {}, {}
    for name, v in variants.items():
        v = dict(v)
        kind = v.pop("kind")
        vids = run_variant(model, images, prompts, kind=kind, seed=seed, **v, **kw)
        rows = [video_metrics(vid, s.color, s.shape, s.direction) for vid, s in zip(vids, specs)]
        results[name] = summarize(rows)
        videos[name] = vids
    return results, videos
