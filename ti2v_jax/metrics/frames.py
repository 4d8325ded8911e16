"""Frame metrics for video prediction and infilling: PSNR and SSIM against the real frames.

`ssim` is scikit-image's `structural_similarity(a, b, channel_axis=-1, data_range=255)`
with its defaults (7x7 uniform window, sample covariance, K1=0.01, K2=0.03, the mean
over the window-complete interior and over channels), computed the same way in float64
with `scipy.ndimage.uniform_filter`; `psnr` is 10 log10(255^2 / MSE) (inf for equal frames).
`per_frame` gives both per frame index, averaged over videos.
"""

from __future__ import annotations

import numpy as np

from ti2v_jax.errors import InputError

DATA_RANGE = 255.0
_WIN, _K1, _K2 = 7, 0.01, 0.03


def _check_pair(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise InputError(f"frames of different shapes cannot be compared: {a.shape} and {b.shape}")
    if a.ndim < 3 or a.shape[-1] != 3:
        raise InputError(f"expected RGB frames (..., H, W, 3), got shape {a.shape}")
    if min(a.shape[-3:-1]) < _WIN:
        raise InputError(f"frames of {a.shape[-3]}x{a.shape[-2]} are smaller than SSIM's {_WIN}x{_WIN} window")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a, b):
    """PSNR (dB) of uint8 frames (..., H, W, 3): one value per frame."""
    a, b = _check_pair(a, b)
    mse = np.mean((a - b) ** 2, axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(DATA_RANGE ** 2 / mse)


def ssim(a, b):
    """SSIM of uint8 frames (..., H, W, 3), as scikit-image computes it: one value per frame."""
    from scipy.ndimage import uniform_filter

    a, b = _check_pair(a, b)
    lead = a.shape[:-3]
    h, w = a.shape[-3:-1]
    # One (H, W) plane per frame and channel; the filter runs over the last two axes only.
    a = np.moveaxis(a.reshape((-1, h, w, 3)), -1, 1).reshape(-1, h, w)
    b = np.moveaxis(b.reshape((-1, h, w, 3)), -1, 1).reshape(-1, h, w)
    size = (1, _WIN, _WIN)
    np_ = _WIN * _WIN
    cov_norm = np_ / (np_ - 1)  # sample covariance
    ux, uy = uniform_filter(a, size), uniform_filter(b, size)
    uxx, uyy, uxy = uniform_filter(a * a, size), uniform_filter(b * b, size), uniform_filter(a * b, size)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (_K1 * DATA_RANGE) ** 2, (_K2 * DATA_RANGE) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (_WIN - 1) // 2
    per_plane = s[:, pad:h - pad, pad:w - pad].mean(axis=(1, 2))
    return per_plane.reshape(-1, 3).mean(axis=1).reshape(lead)


def per_frame(real_videos, fake_videos) -> dict:
    """{"psnr": [T], "ssim": [T]}: each frame index's mean over the videos (N, T, H, W, 3)."""
    p, s = psnr(real_videos, fake_videos), ssim(real_videos, fake_videos)
    return {"psnr": np.mean(p, axis=0).tolist(), "ssim": np.mean(s, axis=0).tolist()}
