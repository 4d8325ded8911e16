"""Sampler settings: every setting's name, default, documentation and bounds, in one place.

    s = SamplerSettings(steps=25, guidance=7.5)            # validated; frozen and hashable
    s = s.replace(resample=(4, 4, 2, 2, 0))                # per-step schedule (one value per DDIM step)
    pipe(image, prompt, settings=s)  /  pipe(image, prompt, steps=25, guidance=7.5)

The command line's flags (`add_arguments`), a batch manifest's keys (`parse_value`), a
sweep's grid and the pipeline's keyword arguments are all derived from `SamplerSettings`'
fields, so each setting has one name everywhere. The pipeline also accepts the
diffusers-style keyword names in `ALIASES` (`num_inference_steps=10` is `steps=10`).

`guidance`, `eta` and `resample` may be one value or one value per DDIM step; those
values enter the compiled program as arrays (`schedules`), so changing them does not
recompile unless it changes `guided` (any guidance != 1), `stochastic` (any eta != 0) or
`max_resample` (the largest resample count), which shape the program. Those three and
everything else are static: `static_key` is the settings' part of the key under which
compiled programs are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ti2v_jax.errors import SettingsError

SLIDES = ("pixel", "latent")
# The networks' dtypes, by name (parameters and compute; `weights.checkpoint.DTYPES` maps them).
DTYPE_NAMES = ("float32", "bfloat16", "float16")
DEFAULT_NUM_NEW_FRAMES = 15  # the published demo: a 16-frame video
MAX_SEED = 2 ** 63  # seeds are integers in [0, MAX_SEED)

# Diffusers-style keyword names the pipeline also accepts -> the one name of the setting.
ALIASES = {
    "num_inference_steps": "steps",
    "resample_iters": "resample",
    "guidance_scale": "guidance",
    "ddpm_inversion": "inversion",
}


def _setting(default, doc, *, kind, lo=None, hi=None, choices=None, per_step=False, optional=False):
    return field(default=default, metadata=dict(doc=doc, kind=kind, lo=lo, hi=hi, choices=choices,
                                                per_step=per_step, optional=optional))


@dataclass(frozen=True)
class SamplerSettings:
    """How a video is sampled (ALGORITHM.md). Invalid values raise `SettingsError` naming the setting."""

    num_new_frames: int | None = _setting(
        None, "frames N generated after the given image(s); default: the checkpoint's recommendation "
              f"(model_index.json 'num_new_frames'), else {DEFAULT_NUM_NEW_FRAMES}",
        kind=int, lo=1, hi=10_000, optional=True)
    steps: int = _setting(10, "DDIM steps S", kind=int, lo=1, hi=1000)
    resample: int | tuple = _setting(
        4, "resampling passes R per DDIM step; a list gives one value per step", kind=int, lo=0, hi=100,
        per_step=True)
    guidance: float | tuple = _setting(
        9.0, "classifier-free guidance scale g (1: no guidance); a list gives one value per step",
        kind=float, lo=0.0, hi=1000.0, per_step=True)
    eta: float | tuple = _setting(
        0.0, "DDIM eta (0: deterministic DDIM, 1: DDPM-like); a list gives one value per step",
        kind=float, lo=0.0, hi=1.0, per_step=True)
    inversion: bool = _setting(True, "start each new frame from a DDPM inversion of the last queue frame "
                                     "(off: from pure noise)", kind=bool)
    slide: str = _setting("pixel", "pixel: decode each new frame and re-encode it into the queue (as "
                                   "published); latent: slide the latents (cheaper, a different algorithm)",
                          kind=str, choices=SLIDES)
    baseline: bool = _setting(False, "run the paper's replacing-based baseline instead of repeat-and-slide",
                              kind=bool)
    height: int | None = _setting(None, "video height in pixels; default: the model's native size",
                                  kind=int, lo=1, hi=4096, optional=True)
    width: int | None = _setting(None, "video width in pixels; default: the model's native size",
                                 kind=int, lo=1, hi=4096, optional=True)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name)))
        for f in _per_step_fields():
            v = getattr(self, f.name)
            if isinstance(v, tuple) and len(v) != self.steps:
                raise SettingsError(f"{f.name} has {len(v)} values but there are {self.steps} steps; "
                                    f"give one value, or one per step")

    # ------------------------------------------------------------------ building

    @classmethod
    def from_kwargs(cls, base: "SamplerSettings | None" = None, **kwargs) -> "SamplerSettings":
        """`base` (default: the defaults) with `kwargs` applied; keys may be names or `ALIASES`.
        A value of None leaves the setting as it is in `base`."""
        return (base or cls()).replace(**kwargs)

    def replace(self, **kwargs) -> "SamplerSettings":
        """A copy with some settings changed (names or `ALIASES`; None keeps the current value)."""
        changes = {}
        for key, value in kwargs.items():
            name = canonical_name(key)
            if name in changes:
                raise SettingsError(f"setting {name!r} given twice (as {key!r} and another name)")
            if value is not None:
                changes[name] = value
        return dataclasses.replace(self, **changes)

    def resolved(self, *, num_new_frames: int, height: int, width: int, multiple: int = 1) -> "SamplerSettings":
        """These settings with the model-dependent defaults (None) filled in; height and width
        must be multiples of `multiple` (the VAE's downsampling factor)."""
        s = dataclasses.replace(self, num_new_frames=self.num_new_frames or num_new_frames,
                                height=self.height or height, width=self.width or width)
        if s.height % multiple or s.width % multiple:
            raise SettingsError(f"height and width must be multiples of {multiple}, got {s.height}x{s.width}")
        return s

    # ------------------------------------------------------------------ what programs take

    def per_step(self, name: str) -> np.ndarray:
        """A per-step setting as an array of one value per DDIM step."""
        v = getattr(self, name)
        kind = _FIELDS[name].metadata["kind"]
        dtype = np.int32 if kind is int else np.float32
        return np.broadcast_to(np.asarray(v, dtype), (self.steps,)).copy()

    def schedules(self) -> dict[str, np.ndarray]:
        """The traced part: guidance (S,), eta (S,) float32 and resample (S,) int32."""
        return {f.name: self.per_step(f.name) for f in _per_step_fields()}

    @property
    def max_resample(self) -> int:
        return int(max(np.atleast_1d(self.resample)))

    @property
    def guided(self) -> bool:
        """False when every step's guidance is 1: the empty-text pass can be skipped."""
        return bool(np.any(self.per_step("guidance") != 1))

    @property
    def stochastic(self) -> bool:
        """False when every step's eta is 0: the DDIM steps draw no noise."""
        return bool(np.any(self.per_step("eta") != 0))

    def static_key(self) -> tuple:
        """The static part of a compiled program's key: everything but the per-step values."""
        return (self.num_new_frames, self.steps, self.max_resample, self.guided, self.stochastic,
                self.inversion, self.slide, self.baseline, self.height, self.width)

    @classmethod
    def with_static_key(cls, key: tuple) -> "SamplerSettings":
        """Settings whose `static_key()` is `key` (any per-step values that fit it)."""
        n, steps, r, guided, stochastic, inversion, slide, baseline, h, w = key
        return cls(num_new_frames=n, steps=steps, resample=r, guidance=9.0 if guided else 1.0,
                   eta=1.0 if stochastic else 0.0, inversion=inversion, slide=slide, baseline=baseline,
                   height=h, width=w)

    def to_dict(self) -> dict:
        """JSON-ready {name: value} (per-step values as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


_FIELDS = {f.name: f for f in dataclasses.fields(SamplerSettings)}
NAMES = tuple(_FIELDS)


def _per_step_fields():
    return [f for f in _FIELDS.values() if f.metadata["per_step"]]


def canonical_name(key: str) -> str:
    """The setting's one name for `key` (a name or an alias); SettingsError for unknown keys."""
    name = ALIASES.get(key, key)
    if name not in _FIELDS:
        raise SettingsError(f"unknown setting {key!r}; known: {', '.join(NAMES)}")
    return name


def doc(name: str) -> str:
    f = _FIELDS[canonical_name(name)]
    d = f.metadata["doc"]
    return d if f.default is None else f"{d} (default {_text(f.default)})"


def _text(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return ",".join(map(_text, v))
    return str(v)


# ------------------------------------------------------------------ parsing and validation


def _scalar(f, v):
    """One value of field f, from Python, JSON or command-line text, checked against its bounds."""
    m = f.metadata
    kind = m["kind"]
    if kind is bool:
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        s = str(v).strip().lower()
        if s in ("on", "true", "yes", "1"):
            return True
        if s in ("off", "false", "no", "0"):
            return False
        raise SettingsError(f"{f.name} must be true/false (or on/off), got {v!r}")
    if kind is str:
        if v not in m["choices"]:
            raise SettingsError(f"{f.name} must be one of {', '.join(m['choices'])}, got {v!r}")
        return v
    if isinstance(v, str):
        try:
            v = kind(v.strip())
        except ValueError:
            raise SettingsError(f"{f.name} must be {'an integer' if kind is int else 'a number'}, "
                                f"got {v!r}") from None
    if isinstance(v, (bool, np.bool_)):
        raise SettingsError(f"{f.name} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if kind is int:
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        if not isinstance(v, (int, np.integer)):
            raise SettingsError(f"{f.name} must be an integer, got {v!r}")
        v = int(v)
    else:
        if not isinstance(v, (int, float, np.integer, np.floating)):
            raise SettingsError(f"{f.name} must be a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise SettingsError(f"{f.name} must be a finite number, got {v}")
    lo, hi = m["lo"], m["hi"]
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SettingsError(f"{f.name} must be in [{_text(lo)}, {_text(hi)}], got {_text(v)}")
    return v


def _check(f, v):
    m = f.metadata
    if v is None:
        if m["optional"]:
            return None
        raise SettingsError(f"{f.name} must be given")
    if m["per_step"] and isinstance(v, str) and "," in v:
        v = v.split(",")
    if isinstance(v, (list, tuple, np.ndarray)):
        if not m["per_step"]:
            raise SettingsError(f"{f.name} takes one value, got {len(v)}")
        vals = tuple(_scalar(f, x) for x in v)
        if not vals:
            raise SettingsError(f"{f.name}: empty list")
        return vals[0] if len(vals) == 1 else vals
    return _scalar(f, v)


def parse_value(key: str, value):
    """A setting's canonical value from JSON or command-line text (a manifest's field, a grid
    value, a flag); SettingsError names the setting."""
    return _check(_FIELDS[canonical_name(key)], value)


def parse_seed(value) -> int:
    """A seed: an integer in [0, 2**63)."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise SettingsError(f"seed must be an integer, got {value!r}") from None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SettingsError(f"seed must be an integer, got {value!r}")
    if not 0 <= int(value) < MAX_SEED:
        raise SettingsError(f"seed must be in [0, 2**63), got {value}")
    return int(value)


# ------------------------------------------------------------------ command line


def _arg_type(name):
    def parse(text):
        try:
            return parse_value(name, text)
        except SettingsError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def add_arguments(parser: argparse.ArgumentParser, names=NAMES) -> None:
    """One flag per setting in `names`: `--steps`, `--num-new-frames`, `--inversion/--no-inversion`,
    ... with the setting's documentation and default. Parsed values land under the setting's
    name; a flag not given leaves None (the setting's default applies)."""
    for name in names:
        f = _FIELDS[name]
        flag = "--" + name.replace("_", "-")
        m = f.metadata
        if m["kind"] is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=doc(name))
        elif m["choices"]:
            parser.add_argument(flag, dest=name, choices=m["choices"], default=None, help=doc(name))
        else:
            metavar = ("N" if m["kind"] is int else "X") + ("[,...]" if m["per_step"] else "")
            parser.add_argument(flag, dest=name, type=_arg_type(name), default=None, metavar=metavar,
                                help=doc(name))


def from_args(args: argparse.Namespace, names=NAMES) -> dict:
    """{name: value} of the settings given on the command line (flags left out are absent)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
