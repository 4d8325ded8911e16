"""Compiling ahead for a target that is not the host (`ti2v_jax.plan`, `ti2v-jax plan`), saved
executables (`ti2v_jax.executables`), and weights placed once per pipeline.

TPU targets compile with libtpu on this CPU-only host (`pip install 'jax[tpu]'`, the README's
install block); without libtpu those tests skip, saying so."""

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ti2v_jax import plan, platforms
from ti2v_jax.errors import SettingsError
from ti2v_jax.models import attention
from ti2v_jax.pipeline import DEFAULT_MODEL
from ti2v_jax.settings import SamplerSettings

ROOT = Path(__file__).resolve().parents[1]

try:
    import libtpu  # noqa: F401
    HAVE_LIBTPU = True
except ImportError:
    HAVE_LIBTPU = False
needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason="libtpu is not installed (pip install 'jax[tpu]')")
try:
    import jax_cuda12_plugin  # noqa: F401
    HAVE_CUDA_PLUGIN = True
except ImportError:
    HAVE_CUDA_PLUGIN = False


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "TI2V_DEBUG": "0", **extra}


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ti2v_jax.cli", *args], capture_output=True, text=True,
                          env=env or _env(), timeout=600)


@needs_libtpu
def test_pallas_attention_compiles_for_a_tpu_mesh_from_this_cpu():
    """The Pallas TPU flash kernel lowered by Mosaic for a v5e mesh, inside the shard_map the
    "mesh" mode runs (a plain jit cannot partition a Mosaic kernel); shapes it cannot take fall
    back to XLA with the reason recorded."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    target = plan.resolve_target("v5e:2x2")
    assert target.platform == "tpu" and target.chips == 4 and target.chip.hbm_gib == 16
    mesh = Mesh(np.array(target.devices), ("data",))
    data = NamedSharding(mesh, P("data"))

    def f(q, kv):
        return attention.attention(q, q, q, 2, implementation="pallas") + \
            attention.attention(q, kv, kv, 2, implementation="pallas").sum()

    body = jax.shard_map(f, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data"), check_vma=False)
    q = jax.ShapeDtypeStruct((8, 256, 128), jnp.bfloat16, sharding=data)
    kv = jax.ShapeDtypeStruct((8, 77, 128), jnp.bfloat16, sharding=data)
    with attention.record_kernels() as calls:
        compiled = jax.jit(body).lower(q, kv).compile()
    assert [c["kernel"] for c in calls] == ["pallas", "xla"], calls
    assert [c["batch"] for c in calls] == [2, 2]  # each chip's share of the 8 items
    assert plan._pallas_flops(calls) == 4 * 2 * 2 * 256 * 256 * 64  # items x heads x Tq x Tk x D
    assert "multiples of 128" in calls[1]["fallback"]
    assert "tpu_custom_call" in compiled.as_text()  # Mosaic's kernel is in the TPU program
    assert compiled.memory_analysis().argument_size_in_bytes == 2 * 256 * 128 * 2 + 2 * 77 * 128 * 2


@needs_libtpu
def test_tpu_targets_have_one_device_per_chip(monkeypatch):
    """Figures are per chip, so a target's devices are its chips: v4 and v5p compile for megacore
    (one device of a chip's two TensorCores, as they run), where libtpu's default v4 topology has
    a device per core; a topology with more devices than chips is refused in one line."""
    for name, chips in (("v4:2x2x1", 4), ("v5p:2x2x1", 4), ("v6e:2x2", 4), ("v4:2x2x2", 8)):
        target = plan.resolve_target(name)
        assert target.chips == chips == len({tuple(d.coords) for d in target.devices}), name
    monkeypatch.setitem(platforms.CHIPS, "v4", platforms.Chip("TPU v4", "tpu", 32, 275, 1228, "default"))
    with pytest.raises(SettingsError, match=r"^topology 'v4:2x2x1' has 8 devices on fewer chips"):
        plan.resolve_target("v4:2x2x1")


@needs_libtpu
@pytest.mark.slow
@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
def test_pallas_blocks_fit_vmem_at_the_full_models_shapes(topology):
    """`pallas_blocks`' choice compiles by Mosaic for one chip with 16 MiB of VMEM at each Pallas
    call of the 1.7B model at 256x256 (U-Net self-attention at 32x32 and 16x16, bfloat16, 64-wide
    heads; the VAE's 512-wide float32 attention), and the next larger key block of the VAE's
    call does not: the bound the blocks are chosen against is real."""
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    one = jax.sharding.SingleDeviceSharding(plan.resolve_target(topology).devices[0])

    def compiles(b, h, t, d, dtype, bq, bk):
        f = functools.partial(fa.flash_attention, sm_scale=d ** -0.5,
                              block_sizes=fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1))
        x = jax.ShapeDtypeStruct((b, h, t, d), dtype, sharding=one)
        try:
            jax.jit(f).lower(x, x, x).compile()
            return True
        except Exception as e:  # noqa: BLE001
            assert "vmem" in str(e).lower(), e
            return False

    shapes = [(32, 5, 1024, 64, jnp.bfloat16), (32, 10, 256, 64, jnp.bfloat16), (16, 1, 1024, 512, jnp.float32)]
    chosen = [attention.pallas_blocks(t, t, d, jnp.dtype(dt).itemsize) for _, _, t, d, dt in shapes]
    assert chosen == [(1024, 512), (256, 256), (1024, 256)]
    for (b, h, t, d, dt), (bq, bk) in zip(shapes, chosen):
        assert compiles(b, h, t, d, dt, bq, bk), (t, d, bq, bk)
    assert not compiles(16, 1, 1024, 512, jnp.float32, 1024, 512)


@needs_libtpu
@pytest.mark.slow
def test_plan_the_default_model_for_a_tpu_topology():
    """The pipeline's own TI2V program compiled for v5e:2x2 with TPU kernels: the memory report
    holds the weights the program reads, the cost per new frame is counted from its units, and
    every time figure is labelled a bound."""
    s = SamplerSettings(steps=2, resample=1, num_new_frames=2)
    r = plan.plan("v5e:2x2", configs=plan.checkpoint_configs(DEFAULT_MODEL), dtype="bfloat16", settings=s)
    print(r.text())
    from ti2v_jax import loading
    comps = loading.load(DEFAULT_MODEL, dtype="bfloat16", component_dtypes={"vae": "float32",
                                                                             "text_encoder": "float32"})
    read = sum(x.nbytes for n in ("unet", "vae") for x in jax.tree.leaves(comps.params[n]))
    assert r.platform == "tpu" and r.chips == 4 and r.fits is True
    assert r.argument_gib * 2**30 >= read
    assert r.flops_per_new_frame > 0 and r.bytes_per_new_frame > 0
    assert all(a["kernel"] in ("xla", "pallas") for a in r.attention)  # TPU kernels, not the host's
    assert {a["asked"] for a in r.attention} == {"pallas"}
    text = r.text()
    assert "bound from the compiled program, not a measurement" in text
    d = r.as_dict()
    assert d["bound"]["new_frames_per_s_per_chip"] > 0 and "not a measurement" in d["bound"]["what"]


@pytest.mark.slow
def test_saved_executables_give_the_same_video_in_a_fresh_process(tmp_path):
    """`plan --save-executables` for this host's CPU, then a fresh process loads the program and
    makes the video without compiling it: bit-equal to a fresh compile."""
    exe = tmp_path / "exe"
    r = _cli("plan", "--target", "cpu", "--steps", "2", "--resample", "1", "--num-new-frames", "1",
             "--save-executables", str(exe), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["platform"] == "cpu" and report["fits"] is None
    manifest = json.loads((exe / "manifest.json").read_text())
    assert manifest["versions"]["jax"] == jax.__version__ and len(manifest["programs"]) == 1
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from ti2v_jax import TI2VZeroPipeline
        from ti2v_jax.settings import SamplerSettings
        exe = None if sys.argv[1] == "fresh" else {str(exe)!r}
        pipe = TI2VZeroPipeline.from_pretrained(executables=exe)
        out = pipe("examples/start_red_circle.png", "a red circle moving right",
                   SamplerSettings(steps=2, resample=1, num_new_frames=1), seed=3, parallel="mesh")
        frames = np.asarray(getattr(out, "frames", out))
        compiled = sum(b.compiled._cache_size() for b in pipe._programs.values())
        np.save(sys.argv[2], frames)
        print("jit-compiled programs:", compiled)
    """)
    outs = {}
    for how in ("fresh", "saved"):
        p = subprocess.run([sys.executable, "-c", script, how, str(tmp_path / how)], capture_output=True,
                           text=True, env=_env(), cwd=ROOT, timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        outs[how] = (np.load(tmp_path / f"{how}.npy"), p.stdout)
    assert "jit-compiled programs: 1" in outs["fresh"][1]
    assert "jit-compiled programs: 0" in outs["saved"][1]  # the saved program ran: nothing traced
    assert np.array_equal(outs["fresh"][0], outs["saved"][0])


def test_a_saved_program_that_does_not_match_is_not_used(tmp_path, caplog):
    """Another version of the compiler, or another call than the saved one: compile, saying why."""
    from ti2v_jax import executables

    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": 1, "versions": {**executables.versions(), "jax": "0.0.1"}, "programs": []}))
    ex = executables.Executables(tmp_path)
    with caplog.at_level("INFO", logger="ti2v_jax.executables"):
        assert ex.get({"program": "ti2v_program"}, jax.devices()) is None
    assert "compiled by" in caplog.text and "0.0.1" in caplog.text
    with pytest.raises(Exception, match="holds no saved programs"):
        executables.Executables(tmp_path / "nothing")


def test_batch_size_defaults_to_the_saved_programs(tmp_path):
    """`ti2v-jax batch --executables` runs, per device, the batch the programs were compiled for."""
    from ti2v_jax import executables

    key = {"program": "ti2v_program", "args": [[[8], "key<fry>"], [[8, 1, 32, 32, 3], "float32"]],
           "devices": {"platform": "tpu", "kind": "TPU v5 lite", "count": 4}}
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": 1, "versions": executables.versions(), "programs": [{"file": "p.bin", "target": "v5e:2x2",
                                                                        "key": key}]}))
    assert executables.Executables(tmp_path).batch_per_device() == 2


def test_plan_errors_are_one_line(capsys, monkeypatch):
    from ti2v_jax import cli

    cases = [
        (("--target", "v9x:2x2"), "unknown target 'v9x:2x2'"),
        (("--target", "v5e"), "needs a topology"),
        (("--target", "cpu", "--batch-per-chip", "x"), "--batch-per-chip must be a whole number"),
    ]
    if not HAVE_CUDA_PLUGIN:
        cases.append((("--target", "h100"), "needs jax's CUDA plugin"))
    if HAVE_LIBTPU:
        cases.append((("--target", "v5e:3x3"), "libtpu does not know the topology 'v5e:3x3'"))
    for args, text in cases:
        rc = cli.main(["plan", *args])
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and text in lines[0], (args, lines)
        assert lines[0].startswith("ti2v-jax plan: error: ")
    monkeypatch.setitem(sys.modules, "libtpu", None)  # as if not installed
    assert cli.main(["plan", "--target", "v5e:2x2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs libtpu" in lines[0] and "pip install 'jax[tpu]==" in lines[0], lines


def _v5e_report(**fields):
    """A v5e plan's report (64 per chip, 15 new frames) with `fields` changed."""
    r = dict(target="v5e:2x2", platform="tpu", chip="TPU v5e", chips=4, program="ti2v", batch_per_chip=64,
             settings=dict(steps=10, max_resample=4, num_new_frames=15, height=256, width=256, num_frames=16,
                           slide="pixel", guided=True, dtype="bfloat16", vae_text_dtype="float32"),
             hbm_gib=16, argument_gib=3.0, temp_gib=30.0, output_gib=0.1, weights_gib=3.0, resident_gib=33.1,
             fits=False, flops_per_new_frame=1e15, bytes_per_new_frame=1e12, pallas_flops_per_new_frame=0.0,
             attention=[], compile_s=1.0, xla_optimal_seconds=None)
    return plan.Report(**{**r, **fields})


def test_xla_estimate_is_reported_only_where_sane():
    """XLA's `optimal_seconds` counts a loop body once: negative, or under the roofline bound of
    the whole call (here 15 new frames x 5.08 s), it is left out of the text and the JSON."""
    bound = 1e15 / 197e12 * 15
    for given, shown in ((-352.0, None), (0.063, None), (bound * 0.99, None), (bound * 2, bound * 2), (None, None)):
        r = _v5e_report(xla_optimal_seconds=given)
        assert r.xla_seconds() == shown and r.as_dict()["xla_optimal_seconds"] == shown, given
        assert ("XLA's own estimate" in r.text()) == (shown is not None), given


def test_a_batch_that_does_not_fit_is_one_line(monkeypatch, capsys):
    from ti2v_jax import cli

    def fake_plan(target, **kw):
        return _v5e_report()

    monkeypatch.setattr(plan, "plan", fake_plan)
    monkeypatch.setattr(plan, "resolve_target", lambda name: plan.Target(name, "tpu", platforms.CHIPS["v5e"], ()))
    assert cli.main(["plan", "--target", "v5e:2x2", "--batch-per-chip", "64"]) == 2
    out, err = capsys.readouterr()
    assert "DOES NOT FIT" in out
    assert err.strip() == "ti2v-jax plan: error: 64 video(s) per chip do not fit a TPU v5e: 33.10 GiB of 16 GiB"


def test_kernels_follow_the_target_not_the_host():
    """Networks built for a TPU carry the Pallas kernel even on this CPU host; a kernel the target
    cannot run is refused at load."""
    from ti2v_jax import loading

    configs = plan.checkpoint_configs(DEFAULT_MODEL)
    nets = {n: configs[n] for n in loading.MODEL_COMPONENTS}
    tpu = loading.abstract_components(nets, platform="tpu")
    cpu = loading.abstract_components(nets, platform="cpu")
    assert "'pallas'" in repr(tpu.unet[0]) and "'pallas'" not in repr(cpu.unet[0])
    assert "'blocked'" in repr(cpu.unet[0])
    with pytest.raises(SettingsError, match="attention='pallas' needs a TPU"):
        loading.load(DEFAULT_MODEL, attention="pallas")
    assert platforms.compiler_options("tpu") == {}  # no TPU here: the table's (empty) options, not refused


@pytest.mark.slow
def test_weights_are_placed_once_per_pipeline():
    """On 4 CPU devices, a pipeline loaded without devices= runs three static-settings groups in
    mesh mode: the device bytes held do not grow with the number of programs (one placed copy).

    Bytes are counted once per device buffer (device, address): a shard's `.data` is a new
    Array object over the same buffer, so summing objects would count one buffer many times."""
    code = textwrap.dedent("""
        import jax
        from ti2v_jax import TI2VZeroPipeline
        def held():
            buffers = {}
            for a in jax.live_arrays():
                for s in a.addressable_shards:
                    buffers[(s.device.id, s.data.unsafe_buffer_pointer())] = s.data.nbytes
            return sum(buffers.values())
        pipe = TI2VZeroPipeline.from_pretrained()
        weights = sum(x.nbytes for x in jax.tree.leaves(pipe.params))
        sizes = [held()]
        for n in (1, 2, 3):
            out = pipe("examples/start_red_circle.png", "a red circle moving right", steps=1, resample=0,
                       num_new_frames=n, parallel="mesh")
            del out
            sizes.append(held())
        print("weights MiB:", f"{weights / 2**20:.2f}")
        print("held MiB:", " ".join(f"{s / 2**20:.2f}" for s in sizes))
        print("programs:", len(pipe._programs), "placements:", len(pipe._placements))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=900,
                       env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert r.returncode == 0, r.stderr[-3000:]
    print(r.stdout)
    weights = float(r.stdout.split("weights MiB:")[1].split()[0])
    sizes = [float(x) for x in r.stdout.split("held MiB:")[1].split("\n")[0].split()]
    assert "programs: 3 placements: 1" in r.stdout
    # After load: one copy on the default device; after the first mesh call: one replicated copy
    # on the 4 devices (at most the loaded copy beside it); later groups add nothing.
    assert sizes[0] >= weights, sizes
    assert 4 * weights <= sizes[1] <= 5 * weights + 1, (weights, sizes)
    assert sizes[2] == sizes[1] and sizes[3] == sizes[1], sizes


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CUDA_PLUGIN, reason="jax's CUDA plugin is not installed (pip install 'jax[cuda12]', "
                    "about 5 GB; the README's test line does not install it)")
def test_plan_compiles_for_an_h100_without_a_gpu():
    """XLA:GPU compiles the default model's TI2V program for an H100 described by
    `platforms.gpu_target_config`, on a host with no GPU: memory from the compiled program, FLOPs
    from the unfused one, and the bound says it is FLOPs-only."""
    r = plan.plan("h100", configs=plan.checkpoint_configs(DEFAULT_MODEL),
                  settings=SamplerSettings(steps=2, resample=1))
    assert r.platform == "gpu" and r.fits and r.bytes_per_new_frame is None
    assert r.argument_gib * 2 ** 30 >= 0.5 * r.weights_gib * 2 ** 30 and r.flops_per_new_frame > 0
    assert "FLOPs alone" in r.text() and "bytes not known" in r.text()
