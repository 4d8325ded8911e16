"""`ti2v-jax evaluate`: FVD (and tFVD / sFVD) and the frame metrics of generated clips against real ones.

    result = evaluate("real_clips.jsonl", "out/", i3d="i3d_pretrained_400.pt", group_by="prompt")

Both sides are read with `metrics.videos` (batch output folders, folders of clips, clip
manifests). FVD uses each clip's first `num_frames` frames (16, as TI2V-Zero's scripts make
them), resized to 224x224 (`i3d.preprocess`); the I3D features are computed in batches
split over the devices (`parallel.run_batched`, "mesh"). Groups and the frame metrics pair
the two sides by id: a clip without a group field takes it from the clip of the same id on
the other side (so a dataset manifest's `subject` groups the generated videos too).
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from ti2v_jax.errors import InputError
from ti2v_jax.metrics import fvd as fvd_lib
from ti2v_jax.metrics import frames as frames_lib
from ti2v_jax.metrics import videos

log = logging.getLogger(__name__)


def _features_fn(graphdef, state, batch):
    from flax import nnx

    from ti2v_jax.metrics import i3d

    return i3d.fvd_features(nnx.merge(graphdef, state), batch)


class FeatureExtractor:
    """I3D features of uint8 clips, in batches over the devices (one compiled program per shape)."""

    def __init__(self, model, *, mode: str = "mesh", devices=None, batch_size: int | None = None):
        from flax import nnx

        self.graphdef, self.state = nnx.split(model)
        self.fn = functools.partial(_features_fn, self.graphdef)
        self.mode, self.devices, self.batch_size = mode, devices, batch_size

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from ti2v_jax.parallel import run_batched

        n = len(batch)
        if self.batch_size and n < self.batch_size:
            # A short last batch repeats its last clip: the full-size program, not a new compile.
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.batch_size - n, axis=0)])
        out = run_batched(self.fn, (batch,), replicated=self.state, mode=self.mode, devices=self.devices)
        return np.asarray(out, np.float32)[:n]


def _batches(clips, size, read):
    """Lists of (clip, frames) of one frame shape and at most `size` clips, in order."""
    out = []
    for c in clips:
        v = read(c)
        if out and (len(out) == size or out[0][1].shape != v.shape):
            yield out
            out = []
        out.append((c, v))
    if out:
        yield out


def _progress(total, desc, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled, leave=False)


def group_keys(key: str, own, other) -> list:
    """Each clip's value of `key`: its own field, else that of the other side's clip with its id."""
    by_id = {c.id: c.fields for c in other}
    keys, missing = [], []
    for c in own:
        v = c.fields.get(key, by_id.get(c.id, {}).get(key))
        if v is None:
            missing.append(c.id)
        elif key == "image" and isinstance(v, str):
            v = os.path.realpath(os.path.expanduser(v))
        keys.append(v if isinstance(v, (str, int, float, bool)) else str(v))
    if missing:
        raise InputError(f"no {key!r} field for {len(missing)} clip(s) (e.g. {', '.join(missing[:3])}), "
                         f"nor for a clip of the same id on the other side")
    return keys


def evaluate(real, fake, *, i3d=None, group_by: str | None = None, num_frames: int = 16, batch_size: int = 4,
             frame_metrics: bool = False, fvd: bool = True, unequal: bool = False, mode: str = "mesh",
             devices=None, progress: bool = True) -> dict:
    """Compare generated clips (`fake`) with real ones; see the module docstring.

    unequal: allow different numbers of real and generated clips (FVD's estimate depends on
    the counts, so by default they must match, which also catches an unfinished batch).

    i3d: the I3D weights (a file path, or an `InceptionI3d`), needed when `fvd`.
    group_by: also the FVD within each group of this field (prompt: tFVD; image/subject: sFVD).
    frame_metrics: PSNR and SSIM per frame index between clips of the same id.
    """
    from ti2v_jax.metrics import i3d as i3d_lib

    if not fvd and not frame_metrics:
        raise InputError("nothing to compute: FVD is off and the frame metrics were not asked for")
    if num_frames < 1:
        raise InputError(f"frames must be positive, got {num_frames}")
    if fvd and num_frames < i3d_lib.MIN_FRAMES:
        raise InputError(f"FVD needs clips of at least {i3d_lib.MIN_FRAMES} frames (I3D), --frames is {num_frames}")
    if fvd and i3d is None:
        raise InputError("FVD needs the I3D weights: pass --i3d FILE (the pytorch_i3d state dict, e.g. "
                         "i3d_pretrained_400.pt; ti2v-jax does not download it), or --no-fvd")
    real_clips, fake_clips = videos.collect(real), videos.collect(fake)
    result = {"real": {"source": os.fspath(real), "clips": len(real_clips)},
              "fake": {"source": os.fspath(fake), "clips": len(fake_clips)}, "frames": num_frames}
    if len(real_clips) != len(fake_clips) and not unequal:
        raise InputError(f"{len(real_clips)} real clips but {len(fake_clips)} generated ones: FVD compares equal "
                         f"numbers (finish the batch, or pass --unequal to compare anyway)")
    real_by_id = {c.id: c for c in real_clips}
    if frame_metrics:
        unpaired = [c.id for c in fake_clips if c.id not in real_by_id]
        if unpaired:
            raise InputError(f"frame metrics pair clips by id: {len(unpaired)} of {len(fake_clips)} generated "
                             f"clips have no real clip of the same id (e.g. {', '.join(unpaired[:3])})")
    real_keys = fake_keys = None
    if group_by:
        real_keys, fake_keys = group_keys(group_by, real_clips, fake_clips), group_keys(group_by, fake_clips, real_clips)
    read = functools.partial(videos.read_clip, num_frames=num_frames)

    extractor = None
    if fvd:
        model = i3d if isinstance(i3d, i3d_lib.InceptionI3d) else i3d_lib.load_i3d(i3d)
        extractor = FeatureExtractor(model, mode=mode, devices=devices, batch_size=batch_size)
        feats = {}
        with _progress(len(real_clips), "real clips", progress) as bar:
            rows = []
            for batch in _batches(real_clips, batch_size, read):
                rows.append(extractor(np.stack([v for _, v in batch])))
                bar.update(len(batch))
            feats["real"] = np.concatenate(rows)
    psnr, ssim, rows = [], [], []
    with _progress(len(fake_clips), "generated clips", progress) as bar:
        for batch in _batches(fake_clips, batch_size, read):
            vids = np.stack([v for _, v in batch])
            if extractor is not None:
                rows.append(extractor(vids))
            if frame_metrics:
                ref = np.stack([videos.resize_like(read(real_by_id[c.id]), *v.shape[1:3]) for c, v in batch])
                psnr.append(frames_lib.psnr(ref, vids))
                ssim.append(frames_lib.ssim(ref, vids))
            bar.update(len(batch))
    if fvd:
        feats["fake"] = np.concatenate(rows)
        for side in ("real", "fake"):
            if len(feats[side]) < 2:
                raise InputError(f"FVD needs at least 2 {side} clips, got {len(feats[side])}")
        result["fvd"] = fvd_lib.fvd(feats["real"], feats["fake"])
        if group_by:
            result["grouped"] = fvd_lib.grouped_fvd(feats["real"], real_keys, feats["fake"], fake_keys, by=group_by)
    if frame_metrics:
        p, s = np.concatenate(psnr), np.concatenate(ssim)
        result["psnr"] = [float(x) for x in p.mean(axis=0)]
        result["ssim"] = [float(x) for x in s.mean(axis=0)]
    return result


def summary(result: dict) -> str:
    """The result as a few lines of text (what `evaluate` prints without --json)."""
    lines = [f"real: {result['real']['clips']} clips from {result['real']['source']}; "
             f"generated: {result['fake']['clips']} clips from {result['fake']['source']}; "
             f"{result['frames']} frames each"]
    if "fvd" in result:
        lines.append(f"FVD: {result['fvd']:.3f}")
    g = result.get("grouped")
    if g:
        name = {"prompt": "tFVD", "image": "sFVD", "subject": "sFVD"}.get(g["by"], f"FVD per {g['by']}")
        lines.append(f"{name}: {g['mean']:.3f} (mean over {len(g['groups'])} groups)")
        for k, v in g["groups"].items():
            lines.append(f"  {v['fvd']:10.3f}  {v['real']:4d} real {v['fake']:4d} generated  {k}")
    if "psnr" in result:
        lines.append("PSNR per frame (dB): " + " ".join(f"{x:.2f}" for x in result["psnr"]))
        lines.append("SSIM per frame:      " + " ".join(f"{x:.4f}" for x in result["ssim"]))
    return "\n".join(lines)
