"""The clips `ti2v-jax evaluate` compares: what a source holds and how a clip is read.

A source is one of
- a `ti2v-jax batch` output folder: each `<id>.json` (its metadata: prompt, image, seed,
  settings, output) with its video `<id>.<gif|mp4>` or PNG folder `<id>/`;
- a folder of clips: `.mp4` / `.gif` files and sub-folders of frames (`frame_*.png` as
  ti2v-jax writes them, else the folder's .png/.jpg files in name order), the id being the
  file's stem or the folder's name;
- a clip manifest (`.jsonl` / `.json`): one object per clip, `{"id", "video", ...}`, where
  `video` is a file or folder (relative to the manifest), optional `frames` lists the
  frame files inside it in order, optional `size` [H, W] center-crops and resizes every
  frame as a start image is loaded (`io.load_image`), and any other field (prompt, image,
  subject, ...) is a group key. `ti2v-jax manifest` writes one for a dataset's real clips.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from ti2v_jax import io
from ti2v_jax.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass
class Clip:
    id: str
    path: Path
    fields: dict = dataclasses.field(default_factory=dict)
    frames: list | None = None      # frame files inside `path`, in order
    size: tuple | None = None       # (H, W): center-crop and resize each frame


def collect(src) -> list[Clip]:
    """The clips of a source (see the module docstring), in id order; one-line InputError if none."""
    p = Path(os.path.expanduser(os.fspath(src)))
    if not p.exists():
        raise InputError(f"{p}: no such folder or clip manifest")
    if p.is_file():
        clips = _from_manifest(p)
    else:
        # Batch output if any .json there is an item's metadata, else a folder of clips.
        clips = _from_batch(p, sorted(p.glob("*.json"))) or _from_folder(p)
    if not clips:
        raise InputError(f"{p}: no clips found (expected .mp4/.gif files, frame folders, or batch output)")
    return sorted(clips, key=lambda c: c.id)


def _from_batch(folder: Path, metas) -> list[Clip]:
    clips, missing = [], []
    for m in metas:
        try:
            meta = json.loads(m.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{m}: unreadable metadata ({e})") from None
        if not isinstance(meta, dict) or "output" not in meta:
            continue  # not an item's metadata
        video = folder / str(meta["output"])
        if not video.exists():
            missing.append(video.name)
            continue
        clips.append(Clip(str(meta.get("id", m.stem)), video, meta))
    if missing:
        raise InputError(f"{folder}: {len(missing)} metadata file(s) without their video: {', '.join(missing[:5])}")
    return clips


def _from_folder(folder: Path) -> list[Clip]:
    clips = []
    for e in sorted(folder.iterdir()):
        if e.name.startswith("."):
            continue
        if e.is_file() and e.suffix.lower() in VIDEO_SUFFIXES:
            clips.append(Clip(e.stem, e))
        elif e.is_dir() and any(f.suffix.lower() in FRAME_SUFFIXES for f in e.iterdir()):
            clips.append(Clip(e.name, e))
    return clips


def _from_manifest(path: Path) -> list[Clip]:
    from ti2v_jax.manifest import read_manifest

    base, clips, problems = path.parent, [], []
    for n, obj in read_manifest(path):
        video = obj.get("video")
        if not isinstance(video, str) or not video:
            problems.append(f"line {n}: field 'video' is missing or not a string")
            continue
        fields = {k: v for k, v in obj.items() if k not in ("video", "frames", "size")}
        if isinstance(fields.get("image"), str):  # as `batch` resolves it, so groups by image match
            fields["image"] = str(_resolve(base, fields["image"]))
        frames, size = obj.get("frames"), obj.get("size")
        if frames is not None and not (isinstance(frames, list) and all(isinstance(f, str) for f in frames)):
            problems.append(f"line {n}: field 'frames' must be a list of file names")
            continue
        if size is not None and not (isinstance(size, list) and len(size) == 2
                                     and all(isinstance(s, int) and s > 0 for s in size)):
            problems.append(f"line {n}: field 'size' must be [height, width]")
            continue
        clips.append(Clip(obj["id"], _resolve(base, video), fields, frames, None if size is None else tuple(size)))
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems[:10]))
    return clips


def _resolve(base: Path, name: str) -> Path:
    p = Path(os.path.expanduser(name))
    return p if p.is_absolute() else base / p


def read_clip(clip: Clip, num_frames: int | None = None) -> np.ndarray:
    """uint8 (T, H, W, 3): the clip's first `num_frames` frames (all when None)."""
    try:
        frames = _read(clip, num_frames)
    except InputError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise InputError(f"cannot read clip {clip.id!r} ({clip.path}): {' '.join(str(e).split())}") from None
    if num_frames is not None and len(frames) < num_frames:
        raise InputError(f"clip {clip.id!r} ({clip.path}) has {len(frames)} frames, {num_frames} are needed")
    return frames


def _read(clip: Clip, num_frames):
    p = clip.path
    if not p.exists():
        raise InputError(f"clip {clip.id!r}: {p} does not exist")
    if clip.frames is not None or (p.is_dir() and not any(io._is_frame_name(n) for n in os.listdir(p))):
        names = clip.frames if clip.frames is not None else sorted(
            n for n in os.listdir(p) if Path(n).suffix.lower() in FRAME_SUFFIXES)
        files = [p / n for n in names[:num_frames]]
        if not files:
            return np.zeros((0, 1, 1, 3), np.uint8)
        if clip.size is not None:
            return np.stack([_to_uint8(io.load_image(f, clip.size)) for f in files])
        return np.stack([_plain(f) for f in files])
    video = io.read_video(p)[:num_frames]
    if clip.size is not None:
        video = np.stack([_to_uint8(io.load_image(f, clip.size)) for f in video])
    return video


def _plain(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """`io.load_image`'s [-1, 1] float back to the uint8 it was made from."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_like(video: np.ndarray, height: int, width: int) -> np.ndarray:
    """Frames center-cropped and resized (as a start image is) to (height, width), if not already."""
    if video.shape[1:3] == (height, width):
        return video
    return np.stack([_to_uint8(io.load_image(f, (height, width))) for f in video])
