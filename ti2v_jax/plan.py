"""Compile ahead for a target (a TPU topology, a GPU, this CPU) from any host: fit and cost.

    report = plan("v5e:16x16", configs=ms17b_configs(), dtype="bfloat16", batch_per_chip=1)
    print(report.text())

Nothing is materialised: the networks are built abstractly from their configs
(`loading.abstract_components`) for the target's platform, so they carry the target's
attention kernels, and the programs are lowered with `jax.ShapeDtypeStruct` arguments and
compiled by the target's compiler (libtpu for TPUs, also on a CPU-only host).

What is compiled is the very program the pipeline runs (`programs.ti2v_program` through
`parallel`'s "mesh" path, a `shard_map` over the "data" axis of the target's devices), so
the compiled memory is that of the real run. In pure data parallelism every chip runs the
same program on its own items, so the figures are per chip, and a topology's totals are
those times its chip count.

Cost. XLA's cost analysis counts the body of a loop once, whatever its trip count, so the
whole program's FLOPs say nothing of a video's. FLOPs and bytes per new frame therefore come
from compiling the units a new frame is made of at the same batch per chip: the guided U-Net
call (run S x (max R + 1) times per new frame), one VAE decode and (pixel slide) one VAE
encode. Attention calls that run a Pallas kernel carry Mosaic's declared cost in the analysis;
the report gives their share (4 x B x heads x Tq x Tk x D each) from the record of the traced calls.
The time per new frame is a bound, never a measurement: the larger of FLOPs over the chip's
datasheet bf16 peak and bytes accessed over its memory bandwidth (`platforms.CHIPS`).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ti2v_jax import executables, loading, parallel, platforms, programs
from ti2v_jax.errors import CheckpointError, SettingsError, first_line
from ti2v_jax.models.attention import record_kernels
from ti2v_jax.sampling import schedule
from ti2v_jax.sampling.guidance import cfg_denoiser
from ti2v_jax.settings import SamplerSettings

GiB = 2 ** 30
TEXT_LEN = 77  # CLIP's context length: the contexts every program takes
# Per-chip batch sizes `batch_per_chip="auto"` tries (doubling, then bisecting the last gap).
MAX_AUTO_BATCH = 64


# ------------------------------------------------------------------ targets

@dataclasses.dataclass(frozen=True)
class Target:
    """Where programs are compiled for: its name, platform, chip figures and devices."""
    name: str
    platform: str
    chip: platforms.Chip | None
    devices: tuple

    @property
    def chips(self) -> int:
        return len(self.devices)


def _tpu_environment() -> None:
    """libtpu set up to describe topologies on a host that is not (or not used as) a TPU host:
    no metadata server to ask, another process may hold libtpu, this host alone, and none of the
    warnings libtpu prints when it finds no TPU here (they would bury the report)."""
    for name, value in (("TPU_SKIP_MDS_QUERY", "1"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                        ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_HOST_BOUNDS", "1,1,1"),
                        ("TF_CPP_MIN_LOG_LEVEL", "3")):
        os.environ.setdefault(name, value)


def resolve_target(name: str) -> Target:
    """A `Target` for "cpu" (this host's CPU devices), a TPU topology ("v5e:2x2", "v5e:16x16",
    "v6e:4x4", "v5p:2x2x1", "v4:2x2x1", ...) or a GPU ("h100", "h200"). One-line SettingsError
    for an unknown name, a topology libtpu does not know, or a compiler that is not installed."""
    name = str(name).strip()
    if name == "cpu":
        return Target("cpu", "cpu", None, tuple(jax.devices("cpu")))
    kind = name.split(":")[0].lower()
    chip = platforms.CHIPS.get(kind)
    if chip is None:
        known = ", ".join(f"{k}:TOPOLOGY" if c.platform == "tpu" else k for k, c in platforms.CHIPS.items())
        raise SettingsError(f"unknown target {name!r}; targets are cpu, {known} (e.g. v5e:2x2, v5e:16x16)")
    from jax.experimental import topologies

    if chip.platform == "gpu":
        # jax's CUDA plugin describes a GPU from XLA's spec files; not installed here means no GPU compiler.
        try:
            import jax_cuda12_plugin  # noqa: F401
        except ImportError:
            raise SettingsError(f"target {name!r} needs jax's CUDA plugin to compile for an NVIDIA GPU: "
                                f"pip install 'jax[cuda12]=={jax.__version__}'") from None
        try:  # the cuDNN the plugin brought (its programs are compiled against that version)
            cudnn = ".".join(importlib.metadata.version("nvidia-cudnn-cu12").split(".")[:3])
        except importlib.metadata.PackageNotFoundError:
            cudnn = "9.10.0"
        try:
            topo = topologies.get_topology_desc(platform="cuda", topology_name=kind, topology="1x1x1",
                                                target_config=platforms.gpu_target_config(kind, cudnn_version=cudnn))
        except Exception as e:  # noqa: BLE001 - the plugin's refusal, whatever its type
            raise SettingsError(f"cannot describe a {chip.name} to compile for: {first_line(e, with_type=False)}") from None
        return Target(name, "gpu", chip, tuple(topo.devices))
    if ":" not in name:
        raise SettingsError(f"target {name!r} needs a topology, e.g. {kind}:2x2 (TPU chips as AxB or AxBxC)")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise SettingsError(f"target {name!r} needs libtpu to compile for a TPU: "
                            f"pip install 'jax[tpu]=={jax.__version__}' (or the ti2v-jax[tpu] extra)") from None
    _tpu_environment()
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name=chip.chip_config)
    except Exception as e:  # noqa: BLE001 - libtpu's refusal of a topology name, whatever its type
        raise SettingsError(f"libtpu does not know the topology {name!r}: {first_line(e, with_type=False)}") from None
    devices = tuple(topo.devices)
    if len({tuple(d.coords) for d in devices}) != len(devices):  # the report's figures are per chip
        raise SettingsError(f"topology {name!r} has {len(devices)} devices on fewer chips; compile for one device per chip")
    return Target(name, "tpu", chip, devices)


# ------------------------------------------------------------------ model shapes

def ms17b_configs() -> dict:
    """The shipped configs of ModelScope text-to-video-ms-1.7b: {unet, vae, text_encoder, scheduler}."""
    from ti2v_jax import MS17B_CONFIGS

    return {n: json.loads((MS17B_CONFIGS / f"{n}.json").read_text())
            for n in ("unet", "vae", "text_encoder", "scheduler")}


def checkpoint_configs(directory) -> dict:
    """The configs of a converted or diffusers-layout checkpoint, read from its JSON files alone."""
    from ti2v_jax.weights import layout as ckpt
    from ti2v_jax.weights.components import SCHEDULER, SCHEDULER_CONFIG

    folder = loading.read_folder(directory)
    directory = folder.path
    if folder.format == "modelscope":
        raise CheckpointError(f"{directory} is an original ModelScope checkpoint, whose VAE and text encoder "
                              f"configs are in its weights: `ti2v-jax convert` it first, or plan with --config ms-1.7b")
    out = {n: ckpt.read_config(directory, n) for n in loading.MODEL_COMPONENTS}
    sched = directory / SCHEDULER / SCHEDULER_CONFIG
    if sched.is_file():
        out["scheduler"] = ckpt.read_json(sched, "scheduler config")
    if folder.index is not None:
        out["model_index"] = folder.index
    return out


# ------------------------------------------------------------------ the report

@dataclasses.dataclass
class Report:
    """What `plan` found: per-chip memory and cost of the compiled programs, and bounds from them."""
    target: str
    platform: str
    chip: str | None
    chips: int
    program: str                    # "ti2v" or "t2v"
    batch_per_chip: int
    settings: dict
    hbm_gib: float | None           # memory per chip (datasheet)
    argument_gib: float
    temp_gib: float
    output_gib: float
    weights_gib: float              # all three networks' parameters
    resident_gib: float             # what the run holds per chip: weights + program's temp + output + batch
    fits: bool | None
    flops_per_new_frame: float
    bytes_per_new_frame: float | None  # None: not known (a GPU target: FLOPs from the unfused program)
    pallas_flops_per_new_frame: float
    attention: list                 # per distinct call: shape, kernel, fallback reason, count
    compile_s: float
    xla_optimal_seconds: float | None
    largest_batch: int | None = None
    tried: list = dataclasses.field(default_factory=list)  # [(batch, resident GiB, fits)]

    @property
    def _chip_key(self):
        return next(k for k, c in platforms.CHIPS.items() if c.name == self.chip)

    def bound_s_per_new_frame(self) -> float | None:
        """Roofline bound on one chip's time for one new frame of each of its B videos at once."""
        if self.chip is None:
            return None
        c = platforms.CHIPS[self._chip_key]
        t = self.flops_per_new_frame / (c.bf16_tflops * 1e12)
        return t if self.bytes_per_new_frame is None else max(t, self.bytes_per_new_frame / (c.hbm_gbps * 1e9))

    def xla_seconds(self) -> float | None:
        """XLA's own `optimal_seconds` for the whole program where it is sane: positive and not
        under the roofline bound of the whole call (XLA counts a loop body once, so at full size
        it comes back negative, or far under the bound). None otherwise."""
        opt, t = self.xla_optimal_seconds, self.bound_s_per_new_frame()
        if opt is None or opt <= 0:
            return None
        return opt if t is None or opt >= t * (self.settings.get("num_new_frames") or 1) else None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["xla_optimal_seconds"] = self.xla_seconds()
        t = self.bound_s_per_new_frame()
        frames = self.settings.get("num_new_frames") or 1
        d["bound"] = None if t is None else {
            "what": "a bound from the compiled program (roofline over the datasheet), not a measurement"
                    if self.bytes_per_new_frame is not None else
                    "a bound from the FLOPs alone (of the unfused program, XLA attention), not a measurement",
            "s_per_new_frame_per_batch": t,
            "new_frames_per_s_per_chip": self.batch_per_chip / t,
            "videos_per_hour": 3600 * self.chips * self.batch_per_chip / (t * frames),
        }
        return d

    def text(self) -> str:
        gi = lambda x: f"{x:.2f} GiB"  # noqa: E731
        s = self.settings
        lines = [f"plan for {self.target} ({self.chip or self.platform}, {self.chips} chip{'s' * (self.chips > 1)}), "
                 f"{self.program.upper()} program, batch {self.batch_per_chip} per chip, "
                 f"S={s['steps']} R={s['max_resample']} N={s['num_new_frames']} {s['height']}x{s['width']} "
                 f"K={s['num_frames']} {s['dtype']} U-Net, {s['slide']} slide",
                 f"  compiled in {self.compile_s:.1f} s on this host",
                 f"  per chip: arguments {gi(self.argument_gib)} (weights {gi(self.weights_gib)}), "
                 f"temporaries {gi(self.temp_gib)}, outputs {gi(self.output_gib)}"]
        if self.hbm_gib is not None:
            lines.append(f"  holds {gi(self.resident_gib)} of {self.hbm_gib:g} GiB per chip: "
                         + ("fits" if self.fits else "DOES NOT FIT"))
        if self.largest_batch is not None:
            capped = self.largest_batch >= MAX_AUTO_BATCH and all(f for _, _, f in self.tried)
            lines.append(f"  largest batch per chip that fits: {self.largest_batch}"
                         + (" or more (the search stops there)" if capped else "") + " (tried "
                         + ", ".join(f"{b}: {r:.2f} GiB{'' if f else ' (no)'}" for b, r, f in self.tried) + ")")
        lines.append(f"  per new frame (all {self.batch_per_chip} items): {self.flops_per_new_frame / 1e12:.2f} TFLOP "
                     f"(Pallas attention {self.pallas_flops_per_new_frame / 1e12:.2f}), "
                     + (f"{self.bytes_per_new_frame / GiB:.1f} GiB accessed" if self.bytes_per_new_frame is not None
                        else "bytes not known (XLA:GPU compiled without a GPU reports no costs: FLOPs are the "
                             "unfused program's, with XLA attention, counted on this host)"))
        t = self.bound_s_per_new_frame()
        if t is not None:
            d = self.as_dict()["bound"]
            lines.append(f"  bound from the {'compiled program' if self.bytes_per_new_frame is not None else 'FLOPs alone'}"
                         f", not a measurement: >= {t:.3f} s per new frame "
                         f"(batch {self.batch_per_chip}), <= {d['new_frames_per_s_per_chip']:.2f} new frames/s per chip, "
                         f"<= {d['videos_per_hour']:.0f} videos ({s['num_new_frames'] + 1} frames) per hour on "
                         f"{self.chips} chips")
        xla = self.xla_seconds()
        if xla is not None:
            lines.append(f"  XLA's own estimate for the whole program: {xla:.3f} s")
        runs = {}
        for a in self.attention:
            runs[a["kernel"]] = runs.get(a["kernel"], 0) + a["count"]
        lines.append("  attention calls per U-Net/VAE pass: "
                     + ", ".join(f"{n} {k}" for k, n in sorted(runs.items())))
        for a in self.attention:
            why = f" ({a['fallback']})" if a["fallback"] else ""
            lines.append(f"    {a['count']:3d} x q {a['q_len']:5d} kv {a['kv_len']:5d} heads {a['heads']:2d}x{a['head_dim']:<3d} "
                         f"{a['dtype']:8s} {a['kernel']}{why}")
        return "\n".join(lines)


# ------------------------------------------------------------------ compiling

def _abstract(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _attention_summary(calls) -> list:
    counts: dict = {}
    for c in calls:
        key = tuple(sorted(c.items()))
        counts[key] = counts.get(key, 0) + 1
    return [dict(k, count=n) for k, n in counts.items()]


def _pallas_flops(calls) -> float:
    """FLOPs of the traced attention calls that run Pallas (their share of the total: Mosaic's
    calls carry their cost in XLA's analysis)."""
    return float(sum(4 * c["batch"] * c["heads"] * c["q_len"] * c["kv_len"] * c["head_dim"]
                     for c in calls if c["kernel"].startswith("pallas")))


def _compile(fn, *args):
    t = time.perf_counter()
    with record_kernels() as calls:
        lowered = fn.lower(*args)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t, calls


def _cost(compiled) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of a compiled program (Pallas kernels included: Mosaic calls carry
    their cost)."""
    ca = compiled.cost_analysis() or {}
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))


class Planner:
    """Compiles a pipeline's programs for a target, abstractly. `components` from
    `loading.abstract_components` for the target's platform. cost_components: the same networks
    with XLA attention for this host's CPU, to count a GPU target's FLOPs (XLA:GPU compiled
    without a GPU reports no costs; a cuDNN call has none on the host)."""

    def __init__(self, target: Target, components, *, num_frames: int, scheduler_config=None, cost_components=None):
        self.target, self.components, self.num_frames = target, components, int(num_frames)
        self.cost_components = cost_components
        sched = scheduler_config or {}
        self.abar = schedule.alphas_cumprod(int(sched.get("num_train_timesteps", schedule.NUM_TRAIN_TIMESTEPS)),
                                            float(sched.get("beta_start", schedule.BETA_START)),
                                            float(sched.get("beta_end", schedule.BETA_END)))
        self.spec = programs.ProgramSpec(components, self.num_frames, self.abar)
        self.weights_bytes = _tree_bytes(components.params)
        ucfg, vcfg = components.configs["unet"], components.configs["vae"]
        self.vae_scale = 2 ** (len(vcfg["block_out_channels"]) - 1)
        self.latent_channels = int(ucfg.get("in_channels", 4))
        self.text_width = int(components.configs["text_encoder"]["hidden_size"])
        self.one = jax.sharding.SingleDeviceSharding(target.devices[0])

    # ---- the real program
    def ti2v_args(self, s: SamplerSettings, batch: int, sharding):
        """Abstract (keys, frames, ctx, uncond, timesteps, guidance, eta, resample, ticket) of a batch."""
        f32, i32 = jnp.float32, jnp.int32
        key_dtype = jax.random.key(0).dtype
        return (_abstract((batch,), key_dtype, sharding), _abstract((batch, 1, s.height, s.width, 3), f32, sharding),
                _abstract((batch, TEXT_LEN, self.text_width), f32, sharding),
                _abstract((batch, TEXT_LEN, self.text_width), f32, sharding),
                _abstract((batch, s.steps), i32, sharding), _abstract((batch, s.steps), f32, sharding),
                _abstract((batch, s.steps), f32, sharding), _abstract((batch, s.steps), i32, sharding),
                _abstract((batch,), i32, sharding))

    def t2v_args(self, s: SamplerSettings, batch: int, sharding):
        f32, i32 = jnp.float32, jnp.int32
        return (_abstract((batch,), jax.random.key(0).dtype, sharding),
                _abstract((batch, TEXT_LEN, self.text_width), f32, sharding),
                _abstract((batch, TEXT_LEN, self.text_width), f32, sharding),
                _abstract((batch, s.steps), i32, sharding), _abstract((batch, s.steps), f32, sharding),
                _abstract((batch, s.steps), f32, sharding), _abstract((batch,), i32, sharding))

    def program(self, s: SamplerSettings, *, t2v: bool = False):
        """The batched callable the pipeline runs for `s` ("mesh" mode over the target's devices)."""
        # Without the progress callback: a program holding a host callback cannot be saved.
        if t2v:
            static = programs.t2v_static([s], self.num_frames, self.vae_scale, self.latent_channels)
            fn = functools.partial(programs.t2v_program, self.spec, **static, report=False)
        else:
            fn = functools.partial(programs.ti2v_program, self.spec, **programs.ti2v_static([s]), report=False)
        return parallel.batched(fn, mode="mesh", devices=self.target.devices, replicated=True)

    def compile_program(self, s: SamplerSettings, batch_per_chip: int, *, t2v: bool = False):
        """(compiled, seconds, attention calls, bytes of one chip's items, the program's key for
        `executables`) of the pipeline's program."""
        b = self.program(s, t2v=t2v)
        whole = b.whole
        params = jax.tree.map(lambda x: _abstract(x.shape, x.dtype, whole), self.components.params)
        n = batch_per_chip * self.target.chips
        args = (self.t2v_args if t2v else self.ti2v_args)(s, n, b.data)
        compiled, secs, calls = _compile(b.compiled, params, args)
        key = executables.program_key(fn=b.fn, params=params, args=args, devices=b.program_devices())
        return compiled, secs, calls, _tree_bytes(args) // self.target.chips, key

    # ---- the units of one new frame (for its cost)
    def _units(self, s: SamplerSettings, batch: int, comps, one) -> dict:
        """{unit: (jitted fn, abstract args)}: the guided U-Net call, one VAE decode and one VAE
        encode of a frame per item, for networks `comps` on device sharding `one`."""
        params = jax.tree.map(lambda x: _abstract(x.shape, x.dtype, one), comps.params)
        h, w = s.height // self.vae_scale, s.width // self.vae_scale
        k, c = self.num_frames, self.latent_channels
        f32 = jnp.float32
        ctx = _abstract((batch, TEXT_LEN, self.text_width), f32, one)
        guided = s.guided
        fns = (self.spec if comps is self.components else programs.ProgramSpec(comps, self.num_frames, self.abar)).fns

        def pair(p, x, t, g, ctx, unc):
            return cfg_denoiser(fns(p)[0], ctx, unc, guided=guided)(x, t, g)

        return {
            "unet": (jax.jit(pair), (params, _abstract((batch, k, h, w, c), f32, one),
                                     _abstract((batch,), jnp.int32, one), _abstract((batch,), f32, one), ctx, ctx)),
            "decode": (jax.jit(lambda p, z: fns(p)[2](z)), (params, _abstract((batch, 1, h, w, c), f32, one))),
            "encode": (jax.jit(lambda p, f: fns(p)[1](f)),
                       (params, _abstract((batch, 1, s.height, s.width, 3), f32, one))),
        }

    def unit_costs(self, s: SamplerSettings, batch: int) -> dict:
        """{unit: (flops, bytes, pallas flops, attention calls)} per call at `batch` items on one
        chip (`_units`). A GPU target (`cost_components`): the target's kernels are recorded from
        tracing, FLOPs from the unfused program with XLA attention on this host, bytes None."""
        out = {}
        units = self._units(s, batch, self.components, self.one)
        if self.cost_components is not None:
            host = self._units(s, batch, self.cost_components, jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0]))
            for name, (fn, args) in units.items():
                with record_kernels() as calls:
                    fn.trace(*args)
                hfn, hargs = host[name]
                out[name] = (float(hfn.lower(*hargs).cost_analysis()["flops"]), None, 0.0, calls)
            return out
        for name, (fn, args) in units.items():
            compiled, _, calls = _compile(fn, *args)
            flops, nbytes = _cost(compiled)
            pallas = _pallas_flops(calls)
            out[name] = (flops, nbytes, pallas, calls)
        return out


def frame_unit_counts(s: SamplerSettings) -> dict:
    """How many times each unit runs per new frame: U-Net S x (max R + 1) (passes beyond an
    item's R_j are computed and discarded), one decode, and one encode with the pixel slide."""
    return {"unet": s.steps * (s.max_resample + 1), "decode": 1, "encode": 1 if s.slide == "pixel" else 0}


def plan(target, *, configs: dict, dtype="bfloat16", vae_text_dtype="float32", batch_per_chip=1,
         settings: SamplerSettings | None = None, num_frames: int | None = None, t2v: bool = False,
         attention: str | None = None, save_executables=None, log=None) -> Report:
    """Compile the pipeline's program for `target` (a name or a `Target`) and report fit and cost.

    configs: {unet, vae, text_encoder[, scheduler, model_index]} (`ms17b_configs()`,
    `checkpoint_configs(dir)`). batch_per_chip: an int, or "auto": the largest that fits,
    found by compiling (doubling from 1, then bisecting). settings: the sampler settings
    (height/width default to the U-Net's sample size). save_executables: a directory to
    serialise the compiled program into (`ti2v_jax.executables`), for the run on the target.
    log: a function taking one line of progress (compiles take minutes at full size).
    """
    log = log or (lambda line: None)
    target = target if isinstance(target, Target) else resolve_target(target)
    index = configs.get("model_index", {})
    k = int(num_frames or index.get("num_frames", 16))
    aux = dtype if vae_text_dtype in (None, "same") else vae_text_dtype
    nets = {n: configs[n] for n in loading.MODEL_COMPONENTS}

    def networks(attention, platform):
        return loading.abstract_components(nets, dtype=dtype, component_dtypes={"vae": aux, "text_encoder": aux},
                                           attention=attention, platform=platform,
                                           scheduler_config=configs.get("scheduler"))

    comps = networks(attention, target.platform)
    # A GPU target's FLOPs are counted on this host, with XLA attention (see `Planner`).
    cost_comps = networks("xla", "cpu") if target.platform == "gpu" else None
    planner = Planner(target, comps, num_frames=k, scheduler_config=configs.get("scheduler"),
                      cost_components=cost_comps)
    ucfg = configs["unet"]
    sample = ucfg.get("sample_size", 32)
    sample = sample if isinstance(sample, (list, tuple)) else (sample, sample)
    s = SamplerSettings.from_kwargs(settings).resolved(
        num_new_frames=int(index.get("num_new_frames", 15)), height=int(sample[0]) * planner.vae_scale,
        width=int(sample[1]) * planner.vae_scale, multiple=planner.vae_scale)

    def one(b):
        log(f"compiling the {'T2V' if t2v else 'TI2V'} program for {target.name} at batch {b} per chip ...")
        compiled, secs, calls, batch_bytes, key = planner.compile_program(s, b, t2v=t2v)
        mem = compiled.memory_analysis()
        resident = _resident(mem, planner, compiled, batch_bytes)
        log(f"compiled in {secs:.0f} s: {resident / GiB:.2f} GiB per chip (arguments "
            f"{mem.argument_size_in_bytes / GiB:.2f}, temporaries {mem.temp_size_in_bytes / GiB:.2f} GiB)")
        return compiled, secs, calls, mem, resident, key

    auto = batch_per_chip == "auto"
    tried = []
    if auto:
        if target.chip is None:
            raise SettingsError("--batch-per-chip auto needs a target with a known memory size (a TPU or GPU)")
        b, best, fits_at = 1, None, {}
        while True:
            res = one(b)
            ok = res[4] <= target.chip.hbm_gib * GiB
            fits_at[b] = res
            tried.append((b, res[4] / GiB, ok))
            if not ok or b >= MAX_AUTO_BATCH:
                break
            best, b = b, 2 * b
        if best is None:
            raise SettingsError(f"not even one video per chip fits a {target.chip.name} ({tried[0][1]:.2f} GiB of "
                                f"{target.chip.hbm_gib:g} GiB)")
        lo, hi = best, b
        while ok is False and hi - lo > 1:
            mid = (lo + hi) // 2
            res = one(mid)
            fits_at[mid] = res
            ok_mid = res[4] <= target.chip.hbm_gib * GiB
            tried.append((mid, res[4] / GiB, ok_mid))
            lo, hi = (mid, hi) if ok_mid else (lo, mid)
        batch_per_chip = lo if not ok else b
        compiled, secs, calls, mem, resident, key = fits_at[batch_per_chip]
    else:
        batch_per_chip = int(batch_per_chip)
        if batch_per_chip < 1:
            raise SettingsError(f"batch per chip must be >= 1, got {batch_per_chip}")
        compiled, secs, calls, mem, resident, key = one(batch_per_chip)
    fits = None if target.chip is None else resident <= target.chip.hbm_gib * GiB

    log("compiling the units of one new frame (guided U-Net call, VAE decode/encode) for their cost ...")
    units = planner.unit_costs(s, batch_per_chip)
    # A T2V call makes K frames from S U-Net calls: per frame, a share of them.
    counts = {"unet": s.steps / k, "decode": 1, "encode": 0} if t2v else frame_unit_counts(s)
    flops = sum(units[u][0] * n for u, n in counts.items())
    nbytes = None if cost_comps is not None else sum(units[u][1] * n for u, n in counts.items())
    pallas = sum(units[u][2] * n for u, n in counts.items())
    ca = compiled.cost_analysis() or {}
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    opt = ca.get("optimal_seconds")
    opt = None if opt is None else float(opt)  # reported where sane (`Report.xla_seconds`)
    att = _attention_summary(units["unet"][3] + units["decode"][3] + units["encode"][3])
    report = Report(
        target=target.name, platform=target.platform, chip=None if target.chip is None else target.chip.name,
        chips=target.chips, program="t2v" if t2v else "ti2v", batch_per_chip=batch_per_chip,
        settings=dict(steps=s.steps, max_resample=s.max_resample, num_new_frames=s.num_new_frames if not t2v else k,
                      height=s.height, width=s.width, num_frames=k, slide=s.slide, guided=s.guided,
                      dtype=jnp.dtype(dtype).name, vae_text_dtype=jnp.dtype(aux).name),
        hbm_gib=None if target.chip is None else target.chip.hbm_gib,
        argument_gib=mem.argument_size_in_bytes / GiB, temp_gib=mem.temp_size_in_bytes / GiB,
        output_gib=mem.output_size_in_bytes / GiB, weights_gib=planner.weights_bytes / GiB,
        resident_gib=resident / GiB, fits=fits, flops_per_new_frame=flops, bytes_per_new_frame=nbytes,
        pallas_flops_per_new_frame=pallas, attention=att, compile_s=secs, xla_optimal_seconds=opt,
        largest_batch=batch_per_chip if auto else None, tried=tried)
    if save_executables is not None:
        log(f"saving the compiled program in {save_executables}")
        executables.save(save_executables, compiled, key=key, target=target.name)
    return report


def _resident(mem, planner, compiled, batch_bytes: int) -> int:
    """Bytes a chip holds while the program runs: its arguments (the weights it reads and its
    items), temporaries and outputs, plus the weights it does not read (jit drops unused
    arguments: the text encoder, which stays beside it for the contexts)."""
    args = mem.argument_size_in_bytes
    unread = max(0, planner.weights_bytes - (args - batch_bytes))
    return int(args + mem.temp_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + unread)
