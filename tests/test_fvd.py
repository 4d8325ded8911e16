"""Fréchet distance, tFVD/sFVD grouping and the frame metrics (ti2v_jax.metrics.fvd / frames).

References: cd-fvd's `FeatureStats` (`cdfvd/utils/metric_utils.py`, StyleGAN-V's, loaded by
path) and its `compute_fvd_from_stats` (read from `cdfvd/fvd.py`'s source: importing that
module imports torchvision), and scikit-image's `structural_similarity`.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from ti2v_jax.errors import InputError
from ti2v_jax.metrics import fvd as fvd_lib
from ti2v_jax.metrics import frames


def _cdfvd_dir() -> Path:
    spec = importlib.util.find_spec("cdfvd")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("cd-fvd is not installed (pip install --no-deps cd-fvd==0.1.1): it holds the reference FVD")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def reference():
    """(cd-fvd's FeatureStats class, its compute_fvd_from_stats as a function of (fake, real))."""
    pytest.importorskip("torch", reason="cd-fvd's metric_utils imports torch")
    import scipy.linalg  # the reference formula's namespace

    root = _cdfvd_dir()
    spec = importlib.util.spec_from_file_location("_cdfvd_metric_utils_by_path", root / "utils" / "metric_utils.py")
    mu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mu)
    # The method alone, compiled from the file's own text: fvd.py's imports need torchvision.
    tree = ast.parse((root / "fvd.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "cdfvd")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "compute_fvd_from_stats")
    namespace = {"np": np, "scipy": scipy, "Optional": Optional, "FeatureStats": mu.FeatureStats}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(root / "fvd.py"), "exec"), namespace)
    method = namespace["compute_fvd_from_stats"]
    return mu.FeatureStats, lambda fake, real: float(method(None, fake, real))


def _ref_stats(cls, x, batch=None):
    s = cls(capture_mean_cov=True)
    for i in range(0, len(x), batch or len(x)):
        s.append(x[i:i + (batch or len(x))])
    return s


def test_streamed_stats_and_distance_match_cdfvd(reference):
    RefStats, ref_fvd = reference
    rng = np.random.default_rng(0)
    # 10,000 videos' features (offset means: the streamed update must not lose them); 200 of them,
    # not I3D's 400, to keep the two 8x cheaper matrix square roots in the quick tier.
    real = (rng.standard_normal((10_000, 200)) + 3.0).astype(np.float32)
    fake = (rng.standard_normal((10_000, 200)) * 1.1 + 3.2 + 0.3 * real).astype(np.float32)
    ours_r, ours_f = fvd_lib.FeatureStats(), fvd_lib.FeatureStats()
    for b in range(0, 10_000, 257):  # uneven batches
        ours_r.update(real[b:b + 257])
        ours_f.update(fake[b:b + 257])
    ref_r, ref_f = _ref_stats(RefStats, real, 1000), _ref_stats(RefStats, fake, 1000)
    for ours, ref in ((ours_r, ref_r), (ours_f, ref_f)):
        m, c = ours.mean_cov()
        rm, rc = ref.get_mean_cov()
        assert np.abs(m - rm).max() < 1e-10 and np.abs(c - rc).max() < 1e-9
    ours = fvd_lib.frechet_distance(ours_r, ours_f)
    ref = ref_fvd(ref_f, ref_r)
    rel = abs(ours - ref) / abs(ref)
    print(f"FVD 10,000 x 200: ours {ours!r}, cd-fvd {ref!r}, relative difference {rel:.3g}")
    assert rel < 1e-6
    # Merging per-shard statistics (how sharded features can be reduced) gives the same.
    merged = fvd_lib.FeatureStats().update(real[:3000]).merge(fvd_lib.FeatureStats().update(real[3000:]))
    assert abs(fvd_lib.frechet_distance(merged, ours_f) - ours) / abs(ours) < 1e-9


def test_small_sets_match_cdfvd(reference):
    """Few videos (rank-deficient covariances, as with tFVD's groups): still the reference's value."""
    RefStats, ref_fvd = reference
    rng = np.random.default_rng(1)
    real, fake = rng.standard_normal((12, 64)).astype(np.float32), rng.standard_normal((9, 64)).astype(np.float32)
    ours = fvd_lib.fvd(real, fake)
    ref = ref_fvd(_ref_stats(RefStats, fake), _ref_stats(RefStats, real))
    print(f"FVD 12 vs 9 videos: ours {ours!r}, cd-fvd {ref!r}")
    assert abs(ours - ref) / abs(ref) < 1e-6


def test_grouped_fvd_hand_checked():
    """Group 'a': fake = real shifted by (3, 4): FVD = 3^2 + 4^2 = 25 (same covariance).
    Group 'b': real has covariance S = diag(0.5, 0.5), fake = 2 * real has 4S: tr(S + 4S - 2*2S) = tr(S) = 1.
    tFVD = mean(25, 1) = 13."""
    a = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [1, 1]], np.float64)
    b = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float64)
    real = np.concatenate([a, b])
    fake = np.concatenate([b * 2, a + [3, 4]])          # other order: grouping is by key, not position
    out = fvd_lib.grouped_fvd(real, ["a"] * 5 + ["b"] * 4, fake, ["b"] * 4 + ["a"] * 5, by="prompt")
    assert out["by"] == "prompt"
    assert out["groups"]["a"]["fvd"] == pytest.approx(25, abs=1e-9)
    assert out["groups"]["b"]["fvd"] == pytest.approx(1, abs=1e-9)
    assert (out["groups"]["a"]["real"], out["groups"]["a"]["fake"], out["groups"]["b"]["fake"]) == (5, 5, 4)
    assert out["mean"] == pytest.approx(13, abs=1e-9)
    assert fvd_lib.fvd(real, real) == pytest.approx(0, abs=1e-9)


def test_grouped_fvd_refuses_small_and_one_sided_groups():
    x = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(InputError, match=r"fewer than 2 videos.*'solo' \(1 real, 1 generated\)") as e:
        fvd_lib.grouped_fvd(x, ["p"] * 3 + ["q"] * 2 + ["solo"], x, ["p"] * 3 + ["q"] * 2 + ["solo"], by="prompt")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="no real videos for image 'z'.*no generated videos for image 'q'"):
        fvd_lib.grouped_fvd(x, ["p"] * 3 + ["q"] * 3, x, ["p"] * 3 + ["z"] * 3, by="image")


def test_ssim_and_psnr_match_scikit_image():
    skm = pytest.importorskip("skimage.metrics", reason="scikit-image is the SSIM reference (test extra)")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (2, 3, 24, 31, 3), dtype=np.uint8)
    noise = rng.integers(-40, 41, real.shape)
    fake = np.clip(real.astype(int) + noise, 0, 255).astype(np.uint8)
    fake[1, 2] = real[1, 2]  # one identical frame: SSIM 1, PSNR inf
    s, p = frames.ssim(real, fake), frames.psnr(real, fake)
    assert s.shape == p.shape == (2, 3)
    err_s = err_p = 0.0
    for i in range(2):
        for t in range(3):
            rs = skm.structural_similarity(real[i, t], fake[i, t], channel_axis=-1, data_range=255)
            rp = skm.peak_signal_noise_ratio(real[i, t], fake[i, t], data_range=255)
            err_s = max(err_s, abs(s[i, t] - rs))
            if np.isfinite(rp):
                err_p = max(err_p, abs(p[i, t] - rp))
            else:
                assert p[i, t] == np.inf
    print(f"SSIM max abs error vs scikit-image {err_s:.3g}, PSNR {err_p:.3g} dB")
    assert err_s < 1e-12 and err_p < 1e-9 and s[1, 2] == pytest.approx(1.0)
    out = frames.per_frame(real, fake)
    assert len(out["ssim"]) == 3 and out["ssim"][0] == pytest.approx(float(s[:, 0].mean()))
    with pytest.raises(InputError, match="different shapes"):
        frames.ssim(real, fake[:, :2])
