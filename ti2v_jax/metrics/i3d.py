"""The Kinetics-400 I3D (Inception-v1 inflated to 3-D) that Fréchet Video Distance uses, in Flax NNX.

The network, its weights' names and its preprocessing follow the PyTorch port that FVD
code loads (`pytorch_i3d.InceptionI3d`, as shipped by `cd-fvd` and by TATS,
`i3d_pretrained_400.pt`), so a state dict of that layout converts with no table:

    ('Mixed_3b', 'b1b', 'conv3d', 'kernel') <-> 'Mixed_3b.b1b.conv3d.weight'
    ('Mixed_3b', 'b1b', 'bn', 'mean')       <-> 'Mixed_3b.b1b.bn.running_mean'

Videos are channels-last, (B, T, H, W, 3). The FVD feature of a clip is the network's
400 logits averaged over time, computed (`preprocess`) on frames resized to 224x224 with
bilinear interpolation (no antialiasing, half-pixel centres, as `F.interpolate(...,
align_corners=False)`) and scaled from [0, 255] to [-1, 1]. The final 2x7x7 average pool
needs at least 9 frames and a 193..224-pixel square (224 after `preprocess`).

The StyleGAN-V detector (`i3d_torchscript.pt`) is a TorchScript export of the TF-Hub
network; its tensors could be read with `torch.jit.load(...).state_dict()` without running
it, but its layout was not available here to write and test a mapping against, so only the
`pytorch_i3d` layout is accepted.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ti2v_jax.errors import CheckpointNotFoundError, InputError

SIZE = 224                 # FVD's frame size (height and width)
NUM_FEATURES = 400         # Kinetics-400 logits
MIN_FRAMES = 9             # the time axis is /8 before the final 2-frame average pool

# (name, in channels, [b0, b1a, b1b, b2a, b2b, b3b] output channels) in network order;
# the max pools sit before Mixed_4b ("MaxPool3d_4a_3x3") and Mixed_5b ("MaxPool3d_5a_2x2").
_MIXED = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
_POOL_BEFORE = {"Mixed_4b": ((3, 3, 3), (2, 2, 2)), "Mixed_5b": ((2, 2, 2), (2, 2, 2))}

# PyTorch keys that are buffers, not weights.
TORCH_IGNORE = (r"\.num_batches_tracked$",)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding, as pytorch_i3d computes it per input size (more at the end)."""
    pad = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return pad // 2, pad - pad // 2


def max_pool_same(x, kernel, stride):
    """pytorch_i3d's MaxPool3dSamePadding: zero-pad to 'SAME', then a VALID max pool (B,T,H,W,C)."""
    pads = [(0, 0)] + [_same_pads(s, k, st) for s, k, st in zip(x.shape[1:4], kernel, stride)] + [(0, 0)]
    x = jnp.pad(x, pads)  # zeros, not -inf, as the reference (its inputs are ReLU outputs anyway)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *stride, 1), "VALID")


def conv3d_same(x, kernel, stride):
    """A 'SAME' 3-D convolution (B,T,H,W,C) x (kt,kh,kw,C,O), as kt 2-D convolutions summed.

    XLA:CPU runs the I3D's 3-D convolutions 1.5-2.9x slower than the same sums of 2-D
    convolutions over the frames (benchmarks/RESULTS.md, "FVD features"); the results are
    the same up to float32 rounding. Time is padded as pytorch_i3d pads it, space by XLA's
    'SAME', which is the same rule.
    """
    kt, st = kernel.shape[0], stride[0]
    b, t = x.shape[:2]
    out_t = -(-t // st)
    x = jnp.pad(x, ((0, 0), _same_pads(t, kt, st), (0, 0), (0, 0), (0, 0)))
    out = None
    for dt in range(kt):
        frames = x[:, dt:dt + (out_t - 1) * st + 1:st]
        y = jax.lax.conv_general_dilated(frames.reshape((b * out_t,) + frames.shape[2:]), kernel[dt], stride[1:],
                                         "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y.reshape((b, out_t) + y.shape[1:])
        out = y if out is None else out + y
    return out


class Unit3D(nnx.Module):
    """Conv3d ('SAME' padding, which equals pytorch_i3d's dynamic padding) + BatchNorm + ReLU."""

    def __init__(self, in_ch, out_ch, kernel=(1, 1, 1), stride=(1, 1, 1), *, bn=True, relu=True,
                 bias=False, dtype=jnp.float32, param_dtype=jnp.float32, rngs):
        self.conv3d = nnx.Conv(in_ch, out_ch, tuple(kernel), strides=tuple(stride), padding="SAME",
                               use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # Running statistics, eps 1e-5 as the reference's BatchNorm3d (momentum is training-only).
        self.bn = nnx.BatchNorm(out_ch, epsilon=1e-5, use_running_average=True, dtype=jnp.float32,
                                param_dtype=param_dtype, rngs=rngs) if bn else None
        self.relu = relu
        self.stride, self.dtype = tuple(stride), dtype

    def __call__(self, x):
        c = self.conv3d  # its parameters, in nnx.Conv's layout; the computation is conv3d_same's
        x = conv3d_same(x.astype(self.dtype), c.kernel[...].astype(self.dtype), self.stride)
        if c.bias is not None:
            x = x + c.bias[...].astype(self.dtype)
        if self.bn is not None:
            x = self.bn(x.astype(jnp.float32)).astype(x.dtype)
        return jax.nn.relu(x) if self.relu else x


class InceptionModule(nnx.Module):
    def __init__(self, in_ch, out, **kw):
        self.b0 = Unit3D(in_ch, out[0], **kw)
        self.b1a = Unit3D(in_ch, out[1], **kw)
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3), **kw)
        self.b2a = Unit3D(in_ch, out[3], **kw)
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3), **kw)
        self.b3b = Unit3D(in_ch, out[5], **kw)

    def __call__(self, x):
        b3 = self.b3b(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), b3], axis=-1)


class InceptionI3d(nnx.Module):
    """`InceptionI3d(num_classes=400)`: `__call__(x)` -> (B, num_classes), `features(x)` the trunk.

    x: (B, T, H, W, 3) in [-1, 1] (see `preprocess`).
    """

    def __init__(self, num_classes: int = NUM_FEATURES, *, in_channels: int = 3, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs=None):
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2), **kw)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, **kw)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), **kw)
        for name, in_ch, out in _MIXED:
            setattr(self, name, InceptionModule(in_ch, out, **kw))
        self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True, **kw)

    def features(self, x):
        """The trunk (through Mixed_5c, before the average pool): (B, T/8, H/32, W/32, 1024)."""
        x = self.Conv3d_1a_7x7(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))      # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))      # MaxPool3d_3a_3x3
        for name, _, _ in _MIXED:
            if name in _POOL_BEFORE:
                x = max_pool_same(x, *_POOL_BEFORE[name])
            x = getattr(self, name)(x)
        return x

    def head(self, x):
        """Trunk output -> logits averaged over time: 2x7x7 average pool (VALID, stride 1), 1x1 conv."""
        if x.shape[1] < 2 or x.shape[2:4] != (7, 7):
            raise InputError(f"I3D's final pool needs a trunk output of at least 2x7x7, got "
                             f"{x.shape[1]}x{x.shape[2]}x{x.shape[3]}: give at least {MIN_FRAMES} frames of "
                             f"193..224 pixels (FVD resizes frames to {SIZE}x{SIZE})")
        x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1,) * 5, "VALID") / 98.0
        return self.logits(x)[:, :, 0, 0, :].mean(axis=1)  # dropout: identity at inference

    def __call__(self, x):
        return self.head(self.features(x))


def preprocess(videos, size: int = SIZE):
    """uint8 (or 0..255 float) videos (B, T, H, W, 3) -> float32 (B, T, size, size, 3) in [-1, 1].

    Bilinear, half-pixel centres, no antialiasing: what `F.interpolate(mode='bilinear',
    align_corners=False)` does in the reference (`cdfvd.third_party.i3d.utils.preprocess_i3d`).
    """
    v = jnp.asarray(videos).astype(jnp.float32)
    b, t, h, w, c = v.shape
    if (h, w) != (size, size):
        v = jax.image.resize(v, (b, t, size, size, c), method="bilinear", antialias=False)
    return 2.0 * v / 255.0 - 1.0


def fvd_features(model: InceptionI3d, videos):
    """The FVD features of uint8 videos (B, T, H, W, 3): (B, 400) float32."""
    return model(preprocess(videos)).astype(jnp.float32)


# ----------------------------------------------------------------------------- weights


def convert_state_dict(state, *, dtype=jnp.float32) -> InceptionI3d:
    """An InceptionI3d holding a `pytorch_i3d` state dict ({key: array}), strictly.

    Every tensor must be used and every parameter and statistic filled with the right shape,
    else `ConversionError` lists the offenders. The class count comes from `logits.conv3d.bias`.
    """
    from ti2v_jax.weights.components import _host_counter_rngs
    from ti2v_jax.weights.mapping import fill_params

    bias = state.get("logits.conv3d.bias")
    num_classes = int(np.shape(bias)[0]) if bias is not None and np.ndim(bias) == 1 else NUM_FEATURES
    abstract = nnx.eval_shape(lambda: InceptionI3d(num_classes, param_dtype=dtype, rngs=_host_counter_rngs(0)))
    graphdef, shapes = nnx.split(abstract)
    flat = nnx.to_flat_state(shapes)
    values, _ = fill_params({tuple(p): tuple(v.get_value().shape) for p, v in flat}, state,
                            ignore=TORCH_IGNORE, dtype=np.dtype(dtype), component="I3D")
    for p, v in flat:
        v.set_value(jnp.asarray(values[tuple(p)]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_i3d(path, *, dtype=jnp.float32) -> InceptionI3d:
    """The I3D of a `pytorch_i3d` checkpoint file (`torch.save(model.state_dict())`, e.g. the
    `i3d_pretrained_400.pt` that TATS and cd-fvd use), converted strictly.

    The file is the user's: ti2v-jax does not download it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(2, "I3D weights file not found (FVD needs the pytorch_i3d "
                                         "state dict, e.g. i3d_pretrained_400.pt; pass it with --i3d)", path)
    from ti2v_jax.weights.torch_io import read_torch_pickle

    state = read_torch_pickle(path)
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return convert_state_dict(state, dtype=dtype)


def check_video_shape(shape, where: str = "video") -> None:
    """A one-line InputError unless `shape` is (T, H, W, 3) with T >= MIN_FRAMES."""
    if len(shape) != 4 or shape[-1] != 3:
        raise InputError(f"{where}: expected frames (T, H, W, 3), got shape {tuple(shape)}")
    if shape[0] < MIN_FRAMES:
        raise InputError(f"{where}: {shape[0]} frames; I3D (FVD) needs at least {MIN_FRAMES}")

