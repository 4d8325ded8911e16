"""Images in, videos out.

The start image goes in the way the published TI2V-Zero demo takes it: a
center crop (to the shorter side for a square model size), a PIL bicubic resize
to the model size, then `uint8 / 127.5 - 1`. Frames come out through
`to_uint8`, which rounds to nearest (the published code truncates; rounding
gives the start image back exactly, see ALGORITHM.md "The whole video").

Decisions:
- Alpha is dropped, never composited (what PIL's `.convert("RGB")` does, and
  what the demo's RGB crop/resize amounts to). Alpha is dropped BEFORE the
  resize: PIL resizes RGBA in premultiplied form, which would darken the
  colour under transparent pixels.
- 16-bit input ('I;16*', 'I', uint16 arrays) is scaled to 8 bits with
  `round(v / 257)`, which maps 0..65535 onto 0..255 exactly; PIL's own
  conversion would clip everything above 255 to white.
- EXIF orientation is applied (`ImageOps.exif_transpose`), so a phone photo
  is cropped the way it is displayed. The demo's imageio reader ignores it.
- Odd-sized `.mp4`: libx264 in yuv420p needs even sizes, so the last row
  and/or column is repeated; the file is then one pixel larger on that side.
- PNG directories hold `frame_0000.png`, `frame_0001.png`, ...
- Every output is written to a hidden temporary name in the destination's
  directory and renamed into place, so a failure leaves nothing behind. The names
  (`.<name>.tmp-<host>-<pid>-<hex>[.gif|.mp4]`, and `.<name>.old-<host>-<pid>-<hex>` for
  a replaced PNG folder) are `ti2v_jax.atomic`'s: the next save to the same destination
  removes what a killed writer of this host left (its pid is gone), as well as the
  names of earlier versions (`.<name>.<pid>.<hex>.tmp*` once their pid is gone,
  `.<name>.<hex>.old`, which named no pid).
- A destination that is a symbolic link is written where it points, and the link
  stays: `--out results` with `results -> /scratch/run1` fills /scratch/run1, as
  `open()` or `cp` would; replacing the user's link by a folder would not be expected.
- GIF: Pillow merges consecutive identical frames into one (adding their
  durations), so reading such a GIF back gives fewer frames; timing is kept.
- GIF colours: one palette for the whole video (no per-frame state, so no flicker):
  up to 40 "flat" colours of the video itself (the means of its most common colour
  bins, e.g. a plain background), then a fixed 6x6x6 colour cube. A pixel within
  4 levels (every channel) of a flat colour takes it as it is: flat areas come back
  within a few levels and undithered. Other pixels are mapped onto the cube with
  8x8 ordered (Bayer) dithering, which depends on that pixel alone, so videos one
  uint8 level apart give GIFs that differ in a few percent of pixels and in 8x8
  areas by a few levels on average. Pillow's default (an adaptive palette per frame
  with error diffusion) turned a one-level difference into changes of up to ~60
  levels across most of the frame, and flickered between frames.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence

from ti2v_jax import cleanup
from ti2v_jax.atomic import _owner_alive, _remove_dead_temporaries
from ti2v_jax.errors import InputError, SettingsError

VIDEO_EXTENSIONS = (".gif", ".mp4")
_FRAME_PATTERN = "frame_{:04d}.png"


# ----------------------------------------------------------------------------- images


def load_image(src, size=(256, 256), *, exif_transpose: bool = True) -> np.ndarray:
    """The start image as float32 (H, W, 3) in [-1, 1], cropped and resized to `size`.

    src: a path, a PIL image, or an array: uint8 (H, W), (H, W, 1), (H, W, 3),
    (H, W, 4); uint16 of the same shapes; float in [0, 1] of the same shapes.
    size: (H, W) of the model. The source is center-cropped to that aspect ratio
    (the shorter side for a square size; an odd leftover pixel goes on the
    left/top, as the demo's `center_crop` does), then resized with PIL bicubic.
    """
    height, width = _check_size(size)
    img = _to_rgb_pil(src, exif_transpose)
    img = _center_crop(img, height, width)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise SettingsError(f"size must be (height, width), got {size!r}") from None
    if height <= 0 or width <= 0:
        raise SettingsError(f"size must be positive, got {size!r}")
    return height, width


def _to_rgb_pil(src, exif_transpose: bool) -> Image.Image:
    if isinstance(src, (str, os.PathLike)):
        img = _open_image(src)
    elif isinstance(src, Image.Image):
        img = src
    elif hasattr(src, "__array__"):
        return Image.fromarray(_array_to_uint8_rgb(np.asarray(src)), "RGB")
    else:
        raise TypeError(f"load_image takes a path, a PIL image or an array, got {type(src).__name__}")
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    return _pil_to_rgb(img)


def _open_image(path) -> Image.Image:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such image file", path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Expected an image file, got a directory", path)
    try:
        with Image.open(path) as img:
            img.load()  # PIL decodes lazily: force it, so truncation shows here
            return img.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def _pil_to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (PNG/TIFF). 'I' is how older Pillow opens 16-bit PNG.
        grey = np.clip(np.asarray(img).astype(np.int64), 0, 65535).astype(np.uint16)
        return Image.fromarray(_array_to_uint8_rgb(grey), "RGB")
    if mode == "F":
        return Image.fromarray(_array_to_uint8_rgb(np.asarray(img)), "RGB")
    # RGBA, LA, PA, P with transparency: alpha is dropped (see module docstring).
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _array_to_uint8_rgb(a: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from the array forms `load_image` accepts."""
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = a[..., :3]
    elif a.ndim != 2:
        raise InputError(
            f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {a.shape}"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"image array is empty: shape {a.shape}")
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == np.uint16:
        out = np.rint(a.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise InputError("float image array contains NaN or inf")
        lo, hi = a.min(), a.max()
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise InputError(
                f"float image arrays must be in [0, 1], got values in [{lo:g}, {hi:g}]"
                " (for [-1, 1] data pass (x + 1) / 2)"
            )
        out = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise InputError(f"image array dtype must be uint8, uint16 or float, got {a.dtype}")
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def _center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Largest centered crop with the aspect ratio height:width."""
    w, h = img.size
    # Compare w/h with width/height in integers to avoid float ties.
    if w * height > h * width:
        new_w, new_h = max(1, round(h * width / height)), h
    else:
        new_w, new_h = w, max(1, round(w * height / width))
    if (new_w, new_h) == (w, h):
        return img
    left = -(-(w - new_w) // 2)  # ceil, as the demo's center_crop
    top = -(-(h - new_h) // 2)
    return img.crop((left, top, left + new_w, top + new_h))


def to_uint8(frames) -> np.ndarray:
    """Frames in [-1, 1] -> uint8, `round(clip((x + 1) / 2, 0, 1) * 255)`.

    Rounds to nearest, so `to_uint8(u / 127.5 - 1) == u` for every uint8 u.
    """
    x = np.asarray(frames)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"to_uint8 expects float frames in [-1, 1], got dtype {x.dtype}")
    x = x.astype(np.float32)
    if np.isnan(x).any():
        raise ValueError("frames contain NaN")
    return np.rint(np.clip((x + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- videos


def _output_kind(path) -> str:
    s = os.fspath(path)
    if s.endswith(("/", os.sep)):
        return "png"
    ext = os.path.splitext(s)[1].lower()
    if ext == "":
        return "png"
    if ext in VIDEO_EXTENSIONS:
        return ext[1:]
    raise InputError(
        f"{s}: unknown video extension {ext!r}; use .gif, .mp4, or a path without"
        " extension (or ending in '/') for a directory of PNG frames"
    )


def check_output_path(path) -> str:
    """Check, before any compute, that `save_video(..., path)` can write; return its kind.

    Returns "gif", "mp4" or "png" (a directory of frames). Raises InputError for
    an unknown extension or "-", FileNotFoundError when the parent directory is missing,
    NotADirectoryError / IsADirectoryError / FileExistsError when the path is the
    wrong kind of thing, PermissionError when the parent is not writable. An
    existing PNG directory is only replaced if it holds nothing but frame_*.png.
    A symbolic link is checked (and later written) where it points; a loop is an InputError.
    """
    if os.fspath(path) == "-":
        raise InputError("output '-': writing a video to standard output is not supported; give a file name")
    kind = _output_kind(path)
    target = _target(path)
    parent = target.parent
    if not parent.exists():
        raise FileNotFoundError(2, "Output directory does not exist", str(parent))
    if not parent.is_dir():
        raise NotADirectoryError(20, "Output parent is not a directory", str(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(13, "Output directory is not writable", str(parent))
    if kind == "png":
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(20, "PNG output path exists and is not a directory", str(target))
        if target.is_dir():
            foreign = [p.name for p in target.iterdir() if not _is_frame_name(p.name)]
            if foreign:
                raise FileExistsError(
                    17, f"Output directory holds files other than frame_*.png ({foreign[:3]}),"
                    " refusing to replace it", str(target))
    elif target.is_dir():
        raise IsADirectoryError(21, "Output path is a directory", str(target))
    return kind


def _target(path) -> Path:
    """Where a video given as `path` is written: the path, or where it points if it is a symbolic
    link (followed to the end, so the link itself is never replaced)."""
    given = Path(os.fspath(path).rstrip("/" + os.sep) or "/")
    if not given.is_symlink():
        return given
    target = Path(os.path.realpath(given))
    if target.is_symlink():
        raise InputError(f"{given}: the output is a loop of symbolic links; give another path")
    return target


def _is_frame_name(name: str) -> bool:
    return name.startswith("frame_") and name.endswith(".png") and name[6:-4].isdigit()


def _check_frames(frames) -> np.ndarray:
    f = np.asarray(frames)
    if f.dtype != np.uint8:
        raise ValueError(f"save_video expects uint8 frames (use to_uint8), got dtype {f.dtype}")
    if f.ndim != 4 or f.shape[-1] != 3 or 0 in f.shape:
        raise ValueError(f"save_video expects frames of shape (T, H, W, 3), got {f.shape}")
    return np.ascontiguousarray(f)


def save_video(frames, path, fps: float = 8) -> Path:
    """Write uint8 frames (T, H, W, 3) as .gif, .mp4, or a directory of PNGs; return the path.

    The kind follows the path (see `check_output_path`). Written to a temporary
    name in the same directory and renamed into place: on error nothing is left.
    GIFs loop forever with a frame time of 1000/fps ms (GIF stores hundredths).
    MP4s are H.264 (libx264, yuv420p, CRF 18) at `fps`.
    """
    frames = _check_frames(frames)
    if not fps > 0:
        raise SettingsError(f"fps must be positive, got {fps}")
    kind = check_output_path(path)
    given, target = Path(os.fspath(path).rstrip("/" + os.sep) or "/"), _target(path)
    _remove_dead_leftovers(target)
    me = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = target.parent / f".{target.name}.tmp-{me}"
    if kind != "png":
        tmp = tmp.with_name(tmp.name + "." + kind)  # ffmpeg picks the muxer by extension
    try:
        with cleanup.temporary(tmp):
            if kind == "png":
                tmp.mkdir()
                for i, frame in enumerate(frames):
                    Image.fromarray(frame, "RGB").save(tmp / _FRAME_PATTERN.format(i), format="PNG")
                _replace_dir(tmp, target, target.parent / f".{target.name}.old-{me}")
            else:
                (_write_gif if kind == "gif" else _write_mp4)(frames, tmp, fps)
                os.replace(tmp, target)
    except BaseException as e:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            # e.g. a full disk while a writer flushes: say which video it was
            raise OSError(e.errno, e.strerror or str(e), str(given)) from None
        raise
    return given


def _replace_dir(new: Path, target: Path, old: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    # An old frame directory (checked to hold only frame_*.png): swap, then delete.
    with contextlib.suppress(OSError):  # the folder keeps its permissions (e.g. group-writable)
        shutil.copymode(target, new)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_dead_leftovers(target: Path) -> None:
    """Remove what killed writers of `target` left beside it: `atomic`'s names (host and pid),
    then those of earlier versions, `.<name>.<pid>.<hex>.tmp[.gif|.mp4]` whose pid is gone from
    this host and `.<name>.<hex>.old` (an old frame folder, named without its writer's pid).
    Only these names, so nothing else beside the video is touched; links are unlinked, never followed."""
    _remove_dead_temporaries(target)
    name = re.escape(target.name)
    tmp = re.compile(rf"\.{name}\.(\d+)\.[0-9a-f]{{8}}\.tmp(\.gif|\.mp4)?")
    old = re.compile(rf"\.{name}\.[0-9a-f]{{8}}\.old")
    host = socket.gethostname()
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for n in names:
        m = tmp.fullmatch(n)
        if (m and not _owner_alive(f"{host}-{m[1]}-0", "")) or old.fullmatch(n):
            p = target.parent / n
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
            except OSError:  # best effort: another writer removed it, or it is not ours to remove
                pass


_GIF_LEVELS = np.array([6, 6, 6])  # levels of red, green, blue in the palette's fixed cube (216 colours)
_GIF_FLAT = 256 - 216  # palette entries for the video's own flat colours
_GIF_BIN = 4  # flat colours are found among bins of 4x4x4 uint8 levels ...
_GIF_TOL = 4  # ... and taken by the pixels within 4 levels of them in every channel
_GIF_MIN_SHARE = 1 / 500  # a flat colour covers at least this share of the video's pixels


def _bayer(n: int) -> np.ndarray:
    """The n x n Bayer matrix (n a power of 2) as thresholds in (0, 1)."""
    m = np.zeros((1, 1))
    while m.shape[0] < n:
        m = np.block([[4 * m, 4 * m + 2], [4 * m + 3, 4 * m + 1]])
    return (m + 0.5) / m.size


def _cube() -> np.ndarray:
    axes = [np.rint(np.arange(n) * 255.0 / (n - 1)) for n in _GIF_LEVELS]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.uint8)


def gif_flat_colours(frames: np.ndarray) -> np.ndarray:
    """The video's flat colours, uint8 (E, 3), E <= 40: the mean colours of its most common
    4x4x4-level bins, each covering at least 1/500 of the pixels, more than 4 levels apart."""
    px = frames.reshape(-1, 3)
    q = px.astype(np.int64) // _GIF_BIN
    n = 256 // _GIF_BIN
    bins = (q[:, 0] * n + q[:, 1]) * n + q[:, 2]
    counts = np.bincount(bins, minlength=n ** 3)
    order = [b for b in np.argsort(-counts, kind="stable") if counts[b] >= max(1, _GIF_MIN_SHARE * len(px))]
    kept: list[np.ndarray] = []
    for b in order[:4 * _GIF_FLAT]:
        mean = np.rint(px[bins == b].mean(axis=0))
        if all(np.abs(mean - k).max() > _GIF_TOL for k in kept):
            kept.append(mean)
            if len(kept) == _GIF_FLAT:
                break
    return np.asarray(kept, np.uint8).reshape(-1, 3)


def gif_palette(flat: np.ndarray | None = None) -> np.ndarray:
    """The palette, uint8 (256, 3): the flat colours (`gif_flat_colours`, padded with black),
    then the 6x6x6 cube, index 40 + (r * 6 + g) * 6 + b."""
    flat = np.zeros((0, 3), np.uint8) if flat is None else flat
    pad = np.zeros((_GIF_FLAT - len(flat), 3), np.uint8)
    return np.concatenate([flat, pad, _cube()])


def gif_indices(frames: np.ndarray, flat: np.ndarray | None = None) -> np.ndarray:
    """Palette indices uint8 (T, H, W) of uint8 frames into `gif_palette(flat)`.

    A pixel within 4 levels (every channel) of a flat colour takes the nearest one. Any other
    channel value v with n levels becomes cube level floor(v * (n - 1) / 255 + threshold(y, x)),
    the threshold from an 8x8 Bayer matrix tiled over the frame: a pixel's colour depends on
    that pixel's value and position alone.
    """
    _, h, w, _ = frames.shape
    th = np.tile(_bayer(8), (-(-h // 8), -(-w // 8)))[:h, :w, None]
    levels = _GIF_LEVELS
    flat = np.zeros((0, 3), np.uint8) if flat is None else flat.astype(np.int64)
    out = np.empty(frames.shape[:3], np.uint8)
    for t, f in enumerate(frames):  # frame by frame: temporaries stay one frame large
        q = np.clip(np.floor(f * ((levels - 1) / 255.0) + th), 0, levels - 1).astype(np.int64)
        idx = _GIF_FLAT + (q[..., 0] * levels[1] + q[..., 1]) * levels[2] + q[..., 2]
        if len(flat):
            dist = np.abs(f[:, :, None, :].astype(np.int64) - flat).max(-1)  # (H, W, E)
            nearest = dist.argmin(-1)
            idx = np.where(np.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= _GIF_TOL, nearest, idx)
        out[t] = idx
    return out


def _write_gif(frames: np.ndarray, path: Path, fps: float) -> None:
    flat = gif_flat_colours(frames)
    palette = gif_palette(flat).ravel().tolist()
    images = []
    for idx in gif_indices(frames, flat):
        im = Image.fromarray(idx, "P")
        im.putpalette(palette)
        images.append(im)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=1000.0 / fps, loop=0, optimize=False)


def _write_mp4(frames: np.ndarray, path: Path, fps: float, crf: int = 18) -> None:
    import imageio_ffmpeg

    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = h + h % 2, w + w % 2
    writer = _quiet_fork(imageio_ffmpeg.write_frames,
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
        quality=None, macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-crf", str(crf), "-movflags", "+faststart"],
    )
    _quiet_fork(writer.send, None)  # starts ffmpeg
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def _quiet_fork(f, *args, **kwargs):
    # JAX warns on every fork once it is running threads; starting ffmpeg is a
    # fork immediately followed by exec, which that warning does not concern.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        return f(*args, **kwargs)


def read_video(path) -> np.ndarray:
    """uint8 (T, H, W, 3) from a .gif, an .mp4, or a directory of frame_*.png (tests, tools)."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise FileNotFoundError(2, "No such video", str(p))
    if p.is_dir():
        names = sorted((n for n in os.listdir(p) if _is_frame_name(n)), key=lambda n: int(n[6:-4]))
        if not names:
            raise InputError(f"{p}: no frame_*.png files")
        frames = [np.asarray(Image.open(p / n).convert("RGB")) for n in names]
    elif p.suffix.lower() == ".gif":
        with Image.open(p) as im:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    elif p.suffix.lower() == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(p), pix_fmt="rgb24")
        w, h = _quiet_fork(next, reader)["size"]
        frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in reader]
    else:
        raise InputError(f"{p}: cannot read videos of this kind")
    return np.stack(frames)
