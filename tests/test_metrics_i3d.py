"""The FVD network (ti2v_jax.metrics.i3d) against the PyTorch I3D that `cd-fvd` ships.

The reference is `cdfvd/third_party/i3d/pytorch_i3d.py` (the `cd-fvd` package, installed
with `--no-deps`), loaded by file path, and cd-fvd's own preprocessing
(`cdfvd.third_party.i3d.utils.preprocess_i3d`). Random weights, every parameter and
BatchNorm statistic perturbed, float32; the errors are printed.

Input sizes: the trunk accepts any size, so it is compared at two small, odd ones (the
'SAME' padding is asymmetric there); the final 2x7x7 average pool needs a 2x7x7 trunk
output (>= 9 frames of 193..224 pixels), so the head is compared on random trunk outputs
and the whole network at FVD's 16x224x224 in a slow test.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ti2v_jax.errors import CheckpointNotFoundError, InputError
from ti2v_jax.weights.mapping import ConversionError

torch = pytest.importorskip("torch", reason="the I3D reference is PyTorch")


def _cdfvd_dir() -> Path:
    spec = importlib.util.find_spec("cdfvd")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("cd-fvd is not installed (pip install --no-deps cd-fvd==0.1.1): it holds the reference I3D")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def ref_module():
    path = _cdfvd_dir() / "third_party" / "i3d" / "pytorch_i3d.py"
    spec = importlib.util.spec_from_file_location("_cdfvd_pytorch_i3d_by_path", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref_i3d(ref_module):
    torch.manual_seed(0)
    net = ref_module.InceptionI3d(400, in_channels=3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
    return net


@pytest.fixture(scope="module")
def ref_state(ref_i3d):
    return {k: v.numpy() for k, v in ref_i3d.state_dict().items()}


@pytest.fixture(scope="module")
def jax_i3d(ref_state):
    from ti2v_jax.metrics import i3d

    return i3d.convert_state_dict(ref_state)


def _report(name, ours, ref):
    err = float(np.abs(ours - ref).max())
    rel = err / float(np.abs(ref).max())
    print(f"{name}: max abs error {err:.3g}, relative to max |ref| {rel:.3g} (max |ref| {np.abs(ref).max():.3g})")
    return err, rel


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 8, 32, 32), (1, 11, 40, 56)], ids=["2x8x32x32", "1x11x40x56"])
def test_trunk_matches_pytorch_i3d(ref_i3d, jax_i3d, shape):
    import jax
    from flax import nnx

    b, t, h, w = shape
    x = torch.randn(b, 3, t, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = ref_i3d.extract_pre_pool_features(x).numpy()
    ours = nnx.jit(lambda m, v: m.features(v))(jax_i3d, jax.numpy.asarray(x.numpy().transpose(0, 2, 3, 4, 1)))
    ours = np.asarray(ours).transpose(0, 4, 1, 2, 3)
    assert ours.shape == ref.shape
    _, rel = _report(f"I3D trunk {shape}", ours, ref)
    assert rel < 1e-5


def test_head_matches_pytorch_i3d(ref_i3d, jax_i3d):
    """Average pool (2x7x7), logits, time mean: the reference's forward after the trunk."""
    x = torch.randn(3, 1024, 4, 7, 7, generator=torch.Generator().manual_seed(2)).abs()
    with torch.no_grad():
        ref = ref_i3d.logits(ref_i3d.dropout(ref_i3d.avg_pool(x))).squeeze(3).squeeze(3).mean(dim=2).numpy()
    ours = np.asarray(jax_i3d.head(x.numpy().transpose(0, 2, 3, 4, 1)))
    assert ours.shape == ref.shape == (3, 400)
    _, rel = _report("I3D head", ours, ref)
    assert rel < 1e-5
    with pytest.raises(InputError, match="at least 9 frames"):
        jax_i3d.head(np.zeros((1, 1, 7, 7, 1024), np.float32))


def test_preprocess_matches_cdfvd():
    from cdfvd.third_party.i3d.utils import preprocess_i3d

    from ti2v_jax.metrics import i3d

    rng = np.random.default_rng(0)
    for shape in [(2, 3, 20, 30, 3), (1, 2, 256, 320, 3), (1, 2, 224, 224, 3)]:  # up, down, same size
        v = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = preprocess_i3d(v).numpy().transpose(0, 2, 3, 4, 1)
        ours = np.asarray(i3d.preprocess(v))
        err = float(np.abs(ours - ref).max())
        print(f"preprocess {shape}: max abs error {err:.3g}")
        assert ours.shape == ref.shape and err < 1e-5


@pytest.mark.slow
def test_fvd_features_full_size(ref_i3d, jax_i3d):
    """FVD's own input: 16 frames, resized to 224x224 by both sides' preprocessing."""
    from cdfvd.third_party.i3d.utils import preprocess_i3d
    from flax import nnx

    from ti2v_jax.metrics import i3d

    v = np.random.default_rng(3).integers(0, 256, (2, 16, 240, 256, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = ref_i3d(preprocess_i3d(v)).numpy()
    ours = np.asarray(nnx.jit(i3d.fvd_features)(jax_i3d, v))
    assert ours.shape == ref.shape == (2, 400)
    _, rel = _report("I3D FVD features 16x224x224", ours, ref)
    assert rel < 1e-5


def test_load_i3d_from_torch_save(tmp_path, ref_i3d, ref_state):
    from ti2v_jax.metrics import i3d

    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(ref_i3d.state_dict(), path)
    model = i3d.load_i3d(path)
    w = np.asarray(model.Mixed_4c.b1b.conv3d.kernel.get_value())
    np.testing.assert_array_equal(w, ref_state["Mixed_4c.b1b.conv3d.weight"].transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.Mixed_4c.b1b.bn.var.get_value()),
                                  ref_state["Mixed_4c.b1b.bn.running_var"])
    with pytest.raises(CheckpointNotFoundError, match="--i3d"):
        i3d.load_i3d(tmp_path / "missing.pt")


def test_converter_is_strict(ref_state):
    from ti2v_jax.metrics import i3d

    broken = dict(ref_state)
    del broken["Mixed_5c.b2b.bn.running_mean"]
    broken["Mixed_5c.extra.weight"] = np.zeros(3, np.float32)
    broken["Conv3d_1a_7x7.conv3d.weight"] = np.zeros((64, 3, 7, 7, 5), np.float32)
    with pytest.raises(ConversionError) as e:
        i3d.convert_state_dict(broken)
    text = str(e.value)
    for part in ("Mixed_5c.b2b.bn.running_mean", "Mixed_5c.extra.weight", "Conv3d_1a_7x7.conv3d.weight"):
        assert part in text
