"""`ti2v-jax evaluate` and `ti2v-jax manifest`: the protocol manifests on small fake dataset
folders, reading batch output and clip folders, the frame metrics, and the one-line errors.
FVD end to end (a random-weight PyTorch I3D saved with torch.save, two CPU devices) is slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ti2v_jax import cli, io
from ti2v_jax.metrics import datasets, videos

REPO = Path(__file__).resolve().parents[1]


def _frames(folder: Path, n: int, size=(12, 10), ext="png", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img_{i:05d}.{ext}")


@pytest.fixture(scope="module")
def ucf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("UCF-101-frames")
    for c in datasets.UCF101_PROMPTS:
        for g in range(1, 11):
            for clip in (1, 2):
                # One long clip (every 3rd frame is taken), the rest short (the first 16).
                n = 50 if (c, g, clip) == ("Drumming", 1, 2) else 17
                _frames(root / c / f"v_{c}_g{g:02d}_c{clip:02d}", n, ext="jpg" if clip == 1 else "png")
    return root


@pytest.fixture(scope="module")
def mug_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("MUG")
    for s in datasets.MUG_FEMALE + datasets.MUG_MALE:
        base = root / s / "session0" if s in datasets.MUG_SESSION_SUBJECTS else root / s
        for e in datasets.MUG_EXPRESSIONS:
            _frames(base / e / "take001", 100 if (s, e) == ("007", "anger") else 20)
    return root


def test_manifest_ucf101(ucf_dir, tmp_path, capsys):
    out = tmp_path / "ucf.jsonl"
    assert cli.main(["manifest", "ucf101", str(ucf_dir), "--out", str(out), "--count", "95"]) == 0
    assert "ucf.real.jsonl" in capsys.readouterr().out
    items = [json.loads(x) for x in out.read_text().splitlines()]
    reals = [json.loads(x) for x in (tmp_path / "ucf.real.jsonl").read_text().splitlines()]
    assert len(items) == len(reals) == 95
    classes = list(datasets.UCF101_PROMPTS)
    for i, (it, re_) in enumerate(zip(items, reals)):
        k = i % 90
        cls, group = classes[k % 9], k // 10 + 1       # the script's own indexing
        assert re_["class"] == cls and re_["group"] == f"g{group:02d}"
        assert Path(re_["video"]).name.startswith(f"v_{cls}_g{group:02d}_c")
        assert it["id"] == re_["id"] == f"{i:04d}_{Path(re_['video']).name}"
        assert it["prompt"] == re_["prompt"] == datasets.UCF101_PROMPTS[cls]
        assert it["image"] == str(Path(re_["video"]) / re_["frames"][0]) and Path(it["image"]).is_file()
        assert it["seed"] == 1234 + i and (it["steps"], it["resample"], it["num_new_frames"]) == (50, 2, 15)
        assert len(re_["frames"]) == 16 and re_["size"] == [256, 256]
    long = [r for r in reals if r["video"].endswith("v_Drumming_g01_c02")]
    assert long and long[0]["frames"] == [f"img_{i:05d}.png" for i in range(0, 48, 3)]
    # The batch command accepts the manifest as it is (no unknown fields).
    from ti2v_jax.manifest import prepare_item, read_manifest

    rows = read_manifest(out)
    assert prepare_item(*rows[0], out.parent).error is None
    # Both files or neither; an existing one is kept unless --overwrite.
    assert cli.main(["manifest", "ucf101", str(ucf_dir), "--out", str(out)]) == 2
    assert len(out.read_text().splitlines()) == 95


def test_manifest_mug(mug_dir, tmp_path):
    items, reals = datasets.mug(mug_dir, count=80)
    assert len(items) == 80
    subjects = datasets.MUG_FEMALE + datasets.MUG_MALE
    for i, (it, re_) in enumerate(zip(items, reals)):
        s, e = subjects[i % 40 % 10], datasets.MUG_EXPRESSIONS[i % 40 // 10]
        assert (re_["subject"], re_["expression"]) == (s, e)
        word = ("woman", "her") if s in datasets.MUG_FEMALE else ("man", "his")
        assert it["prompt"] == f"A {word[0]} with the expression of slight {e} on {word[1]} face."
        assert (it["steps"], it["resample"]) == (10, 4)
    first = reals[0]  # subject 001, anger: 20 frames -> 16 evenly spaced
    assert first["id"] == "0000_001_anger_take001"
    assert first["frames"] == [f"img_{j:05d}.png" for j in np.linspace(0, 19, 16, dtype=int)]
    session = reals[1]  # subject 002 sits under session0: a 4-part name
    assert session["id"] == "0001_002_session0_anger_take001"
    long = reals[5]  # subject 007, anger: 100 frames -> every 6th
    assert long["subject"] == "007" and long["frames"] == [f"img_{j:05d}.png" for j in range(0, 96, 6)]
    (mug_dir / "014" / "sadness" / "take001").rename(mug_dir / "014" / "sadness_moved")
    try:
        rc = cli.main(["manifest", "mug", str(mug_dir), "--out", str(tmp_path / "m.jsonl")])
    finally:
        (mug_dir / "014" / "sadness_moved").rename(mug_dir / "014" / "sadness" / "take001")
    assert rc == 2 and not (tmp_path / "m.jsonl").exists() and not (tmp_path / "m.real.jsonl").exists()


def _batch_folder(folder: Path, clips: dict, fmt="gif"):
    """A folder as `ti2v-jax batch` leaves it: <id>.<fmt> and <id>.json."""
    from ti2v_jax.batch import output_paths

    folder.mkdir(parents=True, exist_ok=True)
    for cid, (video, fields) in clips.items():
        video_path, meta_path = output_paths(folder, cid, fmt)
        io.save_video(video, video_path)
        meta_path.write_text(json.dumps({"id": cid, "output": video_path.name, **fields}))


def _video(seed, t=10, h=16, w=16):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_frame_metrics_and_reading(tmp_path, capsys):
    real_dir, fake_dir = tmp_path / "real", tmp_path / "fake"
    vids = {f"v{i}": _video(i) for i in range(3)}
    real_dir.mkdir()
    for cid, v in vids.items():  # real clips as PNG frame folders
        io.save_video(v, real_dir / cid)
    noisy = {cid: np.clip(v.astype(int) + 5, 0, 255).astype(np.uint8) for cid, v in vids.items()}
    _batch_folder(fake_dir, {cid: (v, {"prompt": "p"}) for cid, v in noisy.items()}, fmt="png")
    assert [c.id for c in videos.collect(fake_dir)] == ["v0", "v1", "v2"]
    (real_dir / "notes.json").write_text("{}")  # not an item's metadata: still a folder of clips
    assert [c.id for c in videos.collect(real_dir)] == ["v0", "v1", "v2"]
    assert cli.main(["evaluate", "--real", str(real_dir), "--fake", str(fake_dir), "--no-fvd", "--frame-metrics",
                     "--frames", "8", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    from ti2v_jax.metrics import frames

    want_p = frames.psnr(np.stack(list(vids.values()))[:, :8], np.stack(list(noisy.values()))[:, :8]).mean(0)
    assert len(out["psnr"]) == len(out["ssim"]) == 8 and "fvd" not in out
    np.testing.assert_allclose(out["psnr"], want_p, rtol=1e-12)
    assert all(0 < s < 1 for s in out["ssim"])
    assert cli.main(["evaluate", "--real", str(real_dir), "--fake", str(fake_dir), "--no-fvd", "--frame-metrics",
                     "--frames", "8", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "3 clips" in text and "PSNR per frame (dB): " + " ".join(f"{x:.2f}" for x in want_p) in text


def _err(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_evaluate_errors(tmp_path, capsys):
    real_dir, fake_dir = tmp_path / "real", tmp_path / "fake"
    real_dir.mkdir()
    for i in range(2):
        io.save_video(_video(i), real_dir / f"r{i}.gif")
    _batch_folder(fake_dir, {"f0": (_video(5), {"prompt": "a"}), "f1": (_video(6, t=4), {"prompt": "a"})})
    base = ["evaluate", "--real", str(real_dir), "--fake", str(fake_dir), "--no-progress"]
    assert "--i3d FILE" in _err(capsys, base)
    assert "I3D weights file not found" in _err(capsys, base + ["--i3d", str(tmp_path / "none.pt")])
    assert "no real clip of the same id" in _err(capsys, base + ["--no-fvd", "--frame-metrics"])
    assert "at least 9 frames" in _err(capsys, base + ["--i3d", "x.pt", "--frames", "4"])
    assert "has 4 frames, 8 are needed" in _err(capsys, ["evaluate", "--real", str(fake_dir), "--fake",
                                                         str(fake_dir), "--no-fvd", "--frame-metrics",
                                                         "--frames", "8", "--no-progress"])
    (real_dir / "bad.gif").write_bytes(b"GIF89a not really")
    (fake_dir / "bad.gif").write_bytes(b"GIF89a not really")
    (fake_dir / "bad.json").write_text(json.dumps({"id": "bad", "output": "bad.gif"}))
    assert "cannot read clip 'bad'" in _err(capsys, ["evaluate", "--real", str(real_dir), "--fake", str(real_dir),
                                                     "--no-fvd", "--frame-metrics", "--no-progress"])
    _batch_folder(tmp_path / "fake2", {"g0": (_video(7), {}), "g1": (_video(8), {})})
    assert "3 real clips but 2 generated ones" in _err(capsys, ["evaluate", "--real", str(real_dir), "--fake",
                                                              str(tmp_path / "fake2"), "--i3d", "x.pt"])
    assert "no such folder" in _err(capsys, ["evaluate", "--real", str(tmp_path / "nope"), "--fake",
                                             str(fake_dir), "--no-fvd", "--frame-metrics"])
    assert "no 'subject' field" in _err(capsys, base + ["--i3d", "x.pt", "--group-by", "subject"])


@pytest.mark.slow
def test_fvd_end_to_end_two_devices(tmp_path):
    """evaluate's FVD and tFVD on two CPU devices ("mesh") = cd-fvd's PyTorch I3D features + its formula."""
    torch = pytest.importorskip("torch", reason="the reference I3D is PyTorch")
    import importlib.util

    spec = importlib.util.find_spec("cdfvd")
    if spec is None:
        pytest.skip("cd-fvd is not installed (pip install --no-deps cd-fvd==0.1.1)")
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        from pathlib import Path
        import numpy as np, torch
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from test_fvd import _cdfvd_dir
        from ti2v_jax import cli, io
        from ti2v_jax.metrics import fvd as fvd_lib
        import jax
        assert jax.device_count() == 2
        root = _cdfvd_dir()
        spec = importlib.util.spec_from_file_location("ref_i3d", root / "third_party/i3d/pytorch_i3d.py")
        ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
        torch.manual_seed(0)
        net = ref.InceptionI3d(400, in_channels=3).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        tmp = Path({str(tmp_path)!r})
        torch.save(net.state_dict(), tmp / "i3d.pt")
        rng = np.random.default_rng(0)
        real = {{f"c{{i}}": rng.integers(0, 256, (9, 24, 32, 3), dtype=np.uint8) for i in range(5)}}
        fake = {{k: np.clip(v.astype(int) + rng.integers(-60, 60, v.shape), 0, 255).astype(np.uint8)
                 for k, v in real.items()}}
        prompts = {{"c0": "a", "c1": "a", "c2": "b", "c3": "b", "c4": "b"}}
        for k, v in real.items():
            (tmp / "real").mkdir(exist_ok=True); (tmp / "fake").mkdir(exist_ok=True)
            io.save_video(v, tmp / "real" / k)
            io.save_video(fake[k], tmp / "fake" / k)
            (tmp / "fake" / f"{{k}}.json").write_text(json.dumps({{"id": k, "output": k, "prompt": prompts[k]}}))
        rc = cli.main(["evaluate", "--real", str(tmp / "real"), "--fake", str(tmp / "fake"), "--i3d",
                       str(tmp / "i3d.pt"), "--frames", "9", "--group-by", "prompt", "--batch-size", "3",
                       "--json", "--no-progress"])
        assert rc == 0
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    # The reference: cd-fvd's preprocessing and PyTorch I3D on the same frames, its formula.
    from cdfvd.third_party.i3d.utils import preprocess_i3d

    from ti2v_jax.metrics import fvd as fvd_lib

    net = _reload_net(torch, tmp_path / "i3d.pt")
    feats = {}
    for side in ("real", "fake"):
        clips = np.stack([io.read_video(tmp_path / side / f"c{i}") for i in range(5)])
        with torch.no_grad():
            feats[side] = net(preprocess_i3d(clips)).numpy()
    want = fvd_lib.fvd(feats["real"], feats["fake"])
    want_a = fvd_lib.fvd(feats["real"][:2], feats["fake"][:2])
    want_b = fvd_lib.fvd(feats["real"][2:], feats["fake"][2:])
    print(f"FVD ours {out['fvd']!r} vs PyTorch I3D features {want!r}; tFVD {out['grouped']['mean']!r} "
          f"vs {(want_a + want_b) / 2!r}")
    assert out["fvd"] == pytest.approx(want, rel=1e-4)
    assert out["grouped"]["groups"]["a"]["real"] == 2 and out["grouped"]["groups"]["b"]["fake"] == 3
    assert out["grouped"]["mean"] == pytest.approx((want_a + want_b) / 2, rel=1e-4)


def _reload_net(torch, path):
    import importlib.util

    from test_fvd import _cdfvd_dir

    spec = importlib.util.spec_from_file_location("_ref_i3d_e2e", _cdfvd_dir() / "third_party/i3d/pytorch_i3d.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    net = ref.InceptionI3d(400, in_channels=3).eval()
    net.load_state_dict(torch.load(path))
    return net
