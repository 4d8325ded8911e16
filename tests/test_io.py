"""ti2v_jax.io: start-image loading and video writing/reading."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ti2v_jax import io

ROOT = Path(__file__).resolve().parents[1]


def _rgb(h, w, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def _blocks(v, n=8):
    """Means of the n x n blocks of frames (T, H, W, 3) (the part that fills whole blocks)."""
    t, h, w, c = v.shape
    v = np.asarray(v, np.float64)[:, :h // n * n, :w // n * n]
    return v.reshape(t, h // n, n, w // n, n, c).mean(axis=(2, 4))


def _textured(t, h, w, seed=0):
    """Frames like a natural video: smooth colour waves, a moving disk and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / h
    frames = []
    for i in range(t):
        f = np.stack([np.sin(6 * x + 0.3 * i + 2 * k) * np.cos(5 * y - k) * 80 + 128
                      + 30 * np.sin(20 * (x + y) + k + i) for k in range(3)], -1)
        f += rng.normal(0, 6, f.shape)
        f[(x - 0.2 - 0.05 * i) ** 2 + (y - 0.5) ** 2 < 0.02] = (220, 60, 40)
        frames.append(f)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _smooth(t, h, w):
    """Frames without fine detail, so lossy codecs stay close."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 255 // max(w - 1, 1) + 16 * i) % 256,
                        y * 255 // max(h - 1, 1),
                        np.full_like(x, 40 * i % 256)], -1) for i in range(t)]
    return np.asarray(frames, np.uint8)


def _reference(img, size):
    """Center crop to a square (demo's ceil offsets), PIL bicubic, /127.5 - 1."""
    w, h = img.size
    s = min(w, h)
    left, top = -(-(w - s) // 2), -(-(h - s) // 2)
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32) / 127.5 - 1


# ----------------------------------------------------------------------------- load_image


def test_rgb_path_matches_reference_pipeline(tmp_path):
    img = Image.fromarray(_rgb(90, 120))
    img.save(tmp_path / "a.png")
    x = io.load_image(tmp_path / "a.png", size=(64, 64))
    assert x.shape == (64, 64, 3) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(x, _reference(img, 64))
    np.testing.assert_array_equal(io.load_image(str(tmp_path / "a.png"), (64, 64)), x)
    np.testing.assert_array_equal(io.load_image(img, (64, 64)), x)
    np.testing.assert_array_equal(io.load_image(np.asarray(img), (64, 64)), x)


def test_rgba_drops_alpha_like_convert_rgb(tmp_path):
    rgb = _rgb(50, 70)
    alpha = np.zeros((50, 70, 1), np.uint8)
    alpha[:, ::2] = 255
    rgba = np.concatenate([rgb, alpha], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    want = _reference(Image.fromarray(rgb), 32)
    np.testing.assert_array_equal(io.load_image(tmp_path / "a.png", (32, 32)), want)
    np.testing.assert_array_equal(io.load_image(rgba, (32, 32)), want)
    la = Image.fromarray(rgba, "RGBA").convert("LA")
    np.testing.assert_array_equal(io.load_image(la, (32, 32)),
                                  _reference(la.convert("L").convert("RGB"), 32))


def test_greyscale_and_palette(tmp_path):
    g = _rgb(40, 40)[..., 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    x = io.load_image(tmp_path / "g.png", (40, 40))
    np.testing.assert_array_equal(x, np.repeat(g[..., None], 3, -1).astype(np.float32) / 127.5 - 1)
    for arr in (g, g[..., None]):
        np.testing.assert_array_equal(io.load_image(arr, (40, 40)), x)

    rgb = _rgb(40, 40)
    p = Image.fromarray(rgb).quantize(16)
    p.save(tmp_path / "p.png")
    want = np.asarray(p.convert("RGB"), np.float32) / 127.5 - 1
    np.testing.assert_array_equal(io.load_image(tmp_path / "p.png", (40, 40)), want)
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png")
    np.testing.assert_array_equal(io.load_image(tmp_path / "pt.png", (40, 40)), want)


def test_16_bit(tmp_path):
    g8 = _rgb(30, 30)[..., 0]
    g16 = g8.astype(np.uint16) * 257  # 0..255 -> 0..65535
    want = io.load_image(g8, (30, 30))
    img16 = Image.fromarray(g16)
    assert img16.mode.startswith("I;16")
    np.testing.assert_array_equal(io.load_image(img16, (30, 30)), want)
    img16.save(tmp_path / "g16.png")
    np.testing.assert_array_equal(io.load_image(tmp_path / "g16.png", (30, 30)), want)
    np.testing.assert_array_equal(io.load_image(img16.convert("I"), (30, 30)), want)
    np.testing.assert_array_equal(io.load_image(g16, (30, 30)), want)
    rgb16 = np.repeat(g16[..., None], 3, -1)
    np.testing.assert_array_equal(io.load_image(rgb16, (30, 30)), want)


def test_float_arrays():
    u = _rgb(20, 20)
    np.testing.assert_array_equal(io.load_image(u / 255.0, (20, 20)), io.load_image(u, (20, 20)))
    np.testing.assert_array_equal(io.load_image((u / 255.0).astype(np.float32), (20, 20)),
                                  io.load_image(u, (20, 20)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        io.load_image(u / 127.5 - 1, (20, 20))
    with pytest.raises(ValueError, match="shape"):
        io.load_image(np.zeros((4, 4, 2), np.uint8), (4, 4))
    with pytest.raises(ValueError, match="shape"):
        io.load_image(np.zeros((2, 4, 4, 3), np.uint8), (4, 4))
    with pytest.raises(ValueError, match="dtype"):
        io.load_image(np.zeros((4, 4, 3), np.int8), (4, 4))
    with pytest.raises(TypeError):
        io.load_image(12, (4, 4))


def test_non_square_is_center_cropped():
    # Wide: a red bar on the left 20 columns of a 120x80 image is cropped away.
    wide = np.zeros((80, 120, 3), np.uint8)
    wide[..., 2] = 255
    wide[:, :20] = (255, 0, 0)
    x = io.load_image(wide, (80, 80))
    np.testing.assert_array_equal(x[..., 0], -1.0)
    np.testing.assert_array_equal(x[..., 2], 1.0)
    # ... and with a resize, still no red anywhere.
    assert io.load_image(wide, (32, 32))[..., 0].max() == -1.0
    # Tall: a green bar on the top rows.
    tall = np.zeros((120, 80, 3), np.uint8)
    tall[:20] = (0, 255, 0)
    assert io.load_image(tall, (80, 80))[..., 1].max() == -1.0
    # Odd leftover goes on the left (the demo's ceil): 81 wide -> column 0 dropped.
    odd = np.zeros((80, 81, 3), np.uint8)
    odd[:, 0] = 255
    odd[:, 80] = 128
    x = io.load_image(odd, (80, 80))
    u = io.to_uint8(x)
    assert u.max() == 128  # column 0 (255) is gone, column 80 (128) is kept
    np.testing.assert_array_equal(u[:, 79], 128)
    np.testing.assert_array_equal(u[:, :79], 0)


def test_non_square_model_size():
    src = np.zeros((100, 100, 3), np.uint8)
    src[:25] = 255  # top quarter white: cropped away by a 2:1 crop (rows 25..75)
    x = io.load_image(src, (64, 128))
    assert x.shape == (64, 128, 3)
    np.testing.assert_array_equal(x, -1.0)
    wide = np.zeros((60, 200, 3), np.uint8)
    wide[:, :40] = 255  # left 40 of 200: cropped away by a 60x120 crop (cols 40..160)
    x = io.load_image(wide, (30, 60))
    assert x.shape == (30, 60, 3)
    np.testing.assert_array_equal(x, -1.0)


def test_resize_to_model_size():
    src = Image.fromarray(_rgb(300, 300))
    x = io.load_image(src, (256, 256))
    want = np.asarray(src.resize((256, 256), Image.Resampling.BICUBIC), np.float32) / 127.5 - 1
    np.testing.assert_array_equal(x, want)
    assert io.load_image(_rgb(10, 10), (40, 24)).shape == (40, 24, 3)


def test_exif_orientation(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 tall: left half red, right half blue
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: red ends up on top
    img.save(tmp_path / "r.png", exif=exif)
    x = io.load_image(tmp_path / "r.png", (40, 20))
    assert (x[:20, :, 0] == 1).all() and (x[20:, :, 2] == 1).all()
    raw = io.load_image(tmp_path / "r.png", (40, 20), exif_transpose=False)
    assert not np.array_equal(raw, x)


def test_round_trip_start_image_exact():
    u = _rgb(64, 64)
    np.testing.assert_array_equal(io.to_uint8(io.load_image(u, (64, 64))), u)
    every = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(io.to_uint8(every.astype(np.float32) / 127.5 - 1), every)
    np.testing.assert_array_equal(io.to_uint8(every.astype(np.float64) / 127.5 - 1), every)


def test_to_uint8_rounds_and_clips():
    # (x + 1) / 2 * 255 for the last three: 1.0, 0.6, 0.4 -> round to 1, 1, 0 (truncation: 1, 0, 0)
    x = np.array([-2.0, -1.0, 1.0, 3.0, 0.0, 2 / 255 - 1, 1.2 / 255 - 1, 0.8 / 255 - 1], np.float32)
    np.testing.assert_array_equal(io.to_uint8(x), [0, 0, 255, 255, 128, 1, 1, 0])
    assert io.to_uint8(x).dtype == np.uint8
    import jax.numpy as jnp

    np.testing.assert_array_equal(io.to_uint8(jnp.asarray(x)), io.to_uint8(x))
    with pytest.raises(ValueError, match="NaN"):
        io.to_uint8(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="float"):
        io.to_uint8(np.array([3], np.uint8))


def test_missing_and_broken_images(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        io.load_image(missing)
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png.*not a readable image"):
        io.load_image(tmp_path / "cut.png")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.jpg.*not a readable image"):
        io.load_image(tmp_path / "cut.jpg")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        io.load_image(tmp_path / "text.png")
    with pytest.raises(IsADirectoryError):
        io.load_image(tmp_path)


# ----------------------------------------------------------------------------- videos


@pytest.mark.parametrize("h,w", [(32, 48), (33, 47)])
def test_write_and_read_back(tmp_path, h, w):
    frames = _smooth(1 + 4, h, w)  # the start image and 4 new frames
    out = io.save_video(frames, tmp_path / "v.gif", fps=8)
    assert out == tmp_path / "v.gif"
    g = io.read_video(tmp_path / "v.gif")
    assert g.shape == (5, h, w, 3)
    # Dithered onto a fixed palette: pixels are off by up to a palette step, 8x8 areas are close.
    assert np.abs(_blocks(g) - _blocks(frames)).mean() < 4
    with Image.open(tmp_path / "v.gif") as im:
        assert im.info.get("loop") == 0 and im.info.get("duration") in (120, 125, 130)

    io.save_video(frames, tmp_path / "v.mp4", fps=8)
    m = io.read_video(tmp_path / "v.mp4")
    ph, pw = h + h % 2, w + w % 2  # odd sizes are padded by one row/column
    assert m.shape == (5, ph, pw, 3)
    assert np.abs(m[:, :h, :w].astype(int) - frames).mean() < 4

    for p in (tmp_path / "frames", str(tmp_path / "frames2") + "/"):
        io.save_video(frames, p)
        d = str(p).rstrip("/")
        assert sorted(os.listdir(d)) == [f"frame_{i:04d}.png" for i in range(5)]
        np.testing.assert_array_equal(io.read_video(d), frames)
    assert sorted(os.listdir(tmp_path)) == ["frames", "frames2", "v.gif", "v.mp4"]  # no temp files


def test_gif_one_level_difference_stays_small(tmp_path):
    """Videos one uint8 level apart (what batching may cause) give GIFs that differ in few
    pixels, each by at most one palette step, and in 8x8 areas by a few levels; Pillow's
    default (a palette per frame, error diffusion) changed most pixels, by up to ~60."""
    rng = np.random.default_rng(1)
    a = _textured(6, 64, 64)
    b = np.clip(a.astype(int) + rng.integers(-1, 2, a.shape), 0, 255).astype(np.uint8)
    io.save_video(a, tmp_path / "a.gif")
    io.save_video(b, tmp_path / "b.gif")
    ga, gb = io.read_video(tmp_path / "a.gif").astype(int), io.read_video(tmp_path / "b.gif").astype(int)
    d = ga - gb
    changed = (d != 0).any(-1).mean()
    area = np.abs(_blocks(ga) - _blocks(gb)).max()
    print(f"1-level perturbation: {changed:.1%} of GIF pixels changed, max {np.abs(d).max()} levels, "
          f"8x8-area mean max {area:.2f} levels; GIF vs source 8x8-area error "
          f"{np.abs(_blocks(ga) - _blocks(a)).mean():.2f}")
    assert changed < 0.1
    assert np.abs(d).max() <= 51  # one step of the 6x6x6 cube
    assert area <= 8
    assert np.abs(_blocks(ga) - _blocks(a)).mean() < 4  # and the GIF looks like the video
    # Identical frames give identical GIF frames (one fixed palette, no per-frame state).
    io.save_video(np.concatenate([a[:1], a[:1] ^ 1, a[:1]]), tmp_path / "c.gif")
    gc = io.read_video(tmp_path / "c.gif")
    np.testing.assert_array_equal(gc[0], gc[-1])
    assert sorted(os.listdir(tmp_path)) == ["a.gif", "b.gif", "c.gif"]


def test_gif_palette_and_indices():
    pal = io.gif_palette()
    assert pal.shape == (256, 3) and len(np.unique(pal[40:], axis=0)) == 216
    for v in (0, 51, 102, 255):
        f = np.full((1, 16, 16, 3), v, np.uint8)  # a cube level in every channel
        np.testing.assert_array_equal(pal[io.gif_indices(f)], f)
    # Without flat colours, a mid-grey is dithered between its two neighbouring levels, with the right mean.
    g = np.full((1, 16, 16, 3), 128, np.uint8)
    out = pal[io.gif_indices(g)].astype(float)
    assert set(np.unique(out[..., 0])) == {102.0, 153.0}
    assert abs(out.mean() - 128) < 2


@pytest.mark.slow
def test_gif_flat_colours_come_back_undithered(tmp_path):
    """A flat background (the examples' (30, 30, 30)) and a flat shape come back within a few
    levels as one colour each, also under mild noise; the rest of the frame stays dithered."""
    rng = np.random.default_rng(3)
    f = np.full((2, 48, 48, 3), 30, np.uint8)
    f[:, 10:30, 10:30] = (200, 40, 70)
    noisy = np.clip(f.astype(int) + rng.integers(-2, 3, f.shape), 0, 255).astype(np.uint8)
    grad = _smooth(2, 48, 48)
    grad[:, :, :8] = 30  # a flat strip beside a smooth gradient
    for name, video in (("flat", f), ("noisy", noisy), ("gradient", grad)):
        io.save_video(video, tmp_path / f"{name}.gif")
        g = io.read_video(tmp_path / f"{name}.gif").astype(int)
        bg = g[:, 40:, 40:] if name != "gradient" else g[:, :, :8]
        err = np.abs(bg - 30).max()
        print(f"{name}: background error {err} levels, {len(np.unique(bg.reshape(-1, 3), axis=0))} colour(s)")
        assert err <= 3 and len(np.unique(bg.reshape(-1, 3), axis=0)) == 1  # no dither pattern
    np.testing.assert_array_equal(io.read_video(tmp_path / "flat.gif")[0], f[0])  # (equal frames merge)
    g = io.read_video(tmp_path / "gradient.gif").astype(int)
    assert np.abs(_blocks(g[:, :, 8:]) - _blocks(grad[:, :, 8:])).mean() < 4  # dithered, close on average
    # The examples' start images (flat shapes on a flat background) round-trip as they are.
    for png in sorted((ROOT / "examples").glob("start_*.png")):
        img = np.asarray(Image.open(png).convert("RGB"))[None]
        io.save_video(img, tmp_path / "start.gif")
        assert np.abs(io.read_video(tmp_path / "start.gif").astype(int) - img).max() <= 3, png.name


@pytest.mark.filterwarnings("ignore:os.fork")
def test_mp4_has_expected_frame_rate(tmp_path):
    import imageio_ffmpeg

    io.save_video(_smooth(4, 16, 16), tmp_path / "v.mp4", fps=12)
    meta = next(imageio_ffmpeg.read_frames(str(tmp_path / "v.mp4")))
    assert abs(meta["fps"] - 12) < 1e-6 and meta["codec"].startswith("h264")


def test_png_dir_replaces_previous_frames_only(tmp_path):
    io.save_video(_smooth(5, 8, 8), tmp_path / "f")
    io.save_video(_smooth(2, 8, 8), tmp_path / "f")
    assert sorted(os.listdir(tmp_path / "f")) == ["frame_0000.png", "frame_0001.png"]
    assert sorted(os.listdir(tmp_path)) == ["f"]
    (tmp_path / "f" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        io.save_video(_smooth(2, 8, 8), tmp_path / "f")
    assert (tmp_path / "f" / "notes.txt").exists()


def test_check_output_path(tmp_path):
    assert io.check_output_path(tmp_path / "a.gif") == "gif"
    assert io.check_output_path(tmp_path / "a.MP4") == "mp4"
    assert io.check_output_path(tmp_path / "a") == "png"
    assert io.check_output_path(str(tmp_path / "a.d") + "/") == "png"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        io.check_output_path(tmp_path / "no_such_dir" / "a.gif")
    with pytest.raises(ValueError, match=r"\.avi"):
        io.check_output_path(tmp_path / "a.avi")
    with pytest.raises(IsADirectoryError):
        (tmp_path / "d.gif").mkdir()
        io.check_output_path(tmp_path / "d.gif")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        io.check_output_path(tmp_path / "file" / "a.gif")
    with pytest.raises(NotADirectoryError):
        io.check_output_path(tmp_path / "file")
    # save_video checks the same way, before writing anything
    with pytest.raises(FileNotFoundError):
        io.save_video(_smooth(2, 8, 8), tmp_path / "no_such_dir" / "a.mp4")


def test_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        io.save_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "a.gif")
    with pytest.raises(ValueError, match="shape"):
        io.save_video(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.gif")
    with pytest.raises(ValueError, match="fps"):
        io.save_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "a.gif", fps=0)
    assert os.listdir(tmp_path) == []


class Boom(Exception):
    pass


def _fail_on_call(monkeypatch, obj, name, n):
    """Make obj.name raise Boom on its n-th call (after n-1 real calls)."""
    real = getattr(obj, name)
    calls = []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise Boom()
        return real(*a, **k)

    monkeypatch.setattr(obj, name, wrapped)


def test_atomic_png_dir(tmp_path, monkeypatch):
    _fail_on_call(monkeypatch, Image.Image, "save", 3)  # after two frames are written
    with pytest.raises(Boom):
        io.save_video(_smooth(5, 8, 8), tmp_path / "f")
    assert os.listdir(tmp_path) == []


def test_atomic_gif_keeps_old_file(tmp_path, monkeypatch):
    io.save_video(_smooth(3, 8, 8), tmp_path / "v.gif")
    old = (tmp_path / "v.gif").read_bytes()
    real_write = io._write_gif

    def partial_then_fail(frames, path, fps):
        real_write(frames[:1], path, fps)  # a partial file exists at the temp name
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_write_gif", partial_then_fail)
    with pytest.raises(KeyboardInterrupt):
        io.save_video(_smooth(5, 8, 8), tmp_path / "v.gif")
    assert os.listdir(tmp_path) == ["v.gif"]
    assert (tmp_path / "v.gif").read_bytes() == old


def test_atomic_mp4(tmp_path, monkeypatch):
    import imageio_ffmpeg

    real = imageio_ffmpeg.write_frames

    def failing_writer(*a, **k):
        gen = real(*a, **k)
        sent = []

        class Proxy:
            def send(self, x):
                if x is not None:
                    sent.append(1)
                    if len(sent) == 3:
                        raise Boom()
                return gen.send(x)

            def close(self):
                gen.close()

        return Proxy()

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", failing_writer)
    with pytest.raises(Boom):
        io.save_video(_smooth(5, 16, 16), tmp_path / "v.mp4")
    assert os.listdir(tmp_path) == []


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        io.read_video(tmp_path / "x.gif")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="frame_"):
        io.read_video(tmp_path / "empty")
