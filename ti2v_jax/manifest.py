"""What a batch job is asked to do: its manifest's items and a sweep's grid of settings.

A manifest line is `{"id": "cat-01", "image": "imgs/cat.png", "prompt": "a cat running"}`
plus optional per-item settings (the fields of `ti2v_jax.settings.SamplerSettings`:
num_new_frames, steps, resample, guidance, eta, inversion, slide, baseline, height,
width) and `seed`. Relative image paths are resolved against the manifest's directory.

- Precedence: sweep overrides > the item's own settings > job defaults (CLI flags).
- Seeds: the item's `seed`, else `stable_seed(id, base_seed)` (sha256 of the id), so a
  video depends on its id and settings only, never on grouping, batching or devices.
- Manifest-level problems (bad JSON, a missing, unsafe or duplicate id) raise
  `InputError` before any compute; an item's own problems (missing fields, invalid
  settings) are set on its `Item.error`, and `ti2v_jax.batch` logs them and goes on.
- A sweep's grid `{setting: [values]}` gives one point per combination
  (`sweep_combos`), each written into its own folder (`combo_name`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ti2v_jax import settings
from ti2v_jax.errors import InputError, SettingsError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}$")


# ----------------------------------------------------------------------------- settings
# A manifest line's settings and a sweep's grid use the names of `SamplerSettings`' fields.

ITEM_FIELDS = ("id", "image", "prompt", "seed", *settings.NAMES)


def parse_setting(name: str, value):
    """A setting's (or the seed's) canonical value from JSON or command-line text; the error names it."""
    return settings.parse_seed(value) if name == "seed" else settings.parse_value(name, value)


def stable_seed(item_id: str, base: int = 0) -> int:
    """The default seed of an item: 31 bits of sha256(f"{base}:{id}"), the same on every machine."""
    return int.from_bytes(hashlib.sha256(f"{base}:{item_id}".encode()).digest()[:4], "big") & 0x7FFFFFFF


# ----------------------------------------------------------------------------- manifest


@dataclass
class Item:
    id: str
    line: int
    image: str = ""
    prompt: str = ""
    seed: int = 0
    settings: settings.SamplerSettings | None = None  # complete (model defaults filled in)
    error: str | None = None
    folder: object = None  # batch's folder it is written to (a sweep's items span several folders)

    def group(self) -> tuple:
        """Items of one group run in one compiled program (they may differ in per-step values)."""
        return self.settings.static_key()


def read_manifest(path) -> list[tuple[int, dict]]:
    """(line number, object) per line of a JSONL manifest (or a JSON list); ids checked.

    Raises InputError listing every structural problem: bad JSON, a line that is not an
    object, an id that is missing, not filesystem-safe, or not unique (case-insensitively,
    for case-insensitive filesystems).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); save the manifest as UTF-8") from None
    problems, rows = [], []
    if text.lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON: {e}") from None
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    problems.append(f"line {n}: not valid JSON ({e.msg})")
    seen = {}
    for n, obj in rows:
        if not isinstance(obj, dict):
            problems.append(f"line {n}: expected a JSON object, got {type(obj).__name__}")
            continue
        i = obj.get("id")
        if isinstance(i, int) and not isinstance(i, bool):
            obj["id"] = i = str(i)
        if not isinstance(i, str) or not _ID.match(i) or i.lower().endswith((".json", ".jsonl")):
            problems.append(f"line {n}: id {i!r} is missing or not filesystem-safe (1-128 letters, digits "
                            f"and '._=+-', starting with a letter or digit, not ending in .json/.jsonl)")
        elif i.lower() in seen:
            problems.append(f"line {n}: id {i!r} repeats line {seen[i.lower()]}")
        else:
            seen[i.lower()] = n
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise InputError(f"{path}: " + "; ".join(problems[:20]) + more)
    if not rows:
        raise InputError(f"{path}: the manifest is empty")
    return rows


def prepare_item(n: int, obj: dict, base_dir: Path, *, defaults=None, overrides=None, base_seed=0,
                 size=(256, 256), multiple=8, num_new_frames=settings.DEFAULT_NUM_NEW_FRAMES) -> Item:
    """An Item with complete settings, or with `error` set (never raises).

    size, multiple, num_new_frames: the model's defaults (`pipe.default_size`, `pipe.vae_scale`,
    `pipe.default_num_new_frames`) for the settings left unset."""
    item = Item(id=obj["id"], line=n)
    try:
        unknown = sorted(set(obj) - set(ITEM_FIELDS))
        if unknown:
            raise SettingsError(f"unknown field(s) {unknown}; known: {', '.join(ITEM_FIELDS)}")
        for key in ("image", "prompt"):
            if not isinstance(obj.get(key), str):
                raise InputError(f"field {key!r} is missing or not a string")
        if not obj["image"]:
            raise InputError("field 'image' is empty")
        image = Path(os.path.expanduser(obj["image"]))
        item.image = str(image if image.is_absolute() else base_dir / image)
        item.prompt = obj["prompt"]
        s = settings.SamplerSettings()
        for source in (defaults or {}, {k: obj[k] for k in settings.NAMES if k in obj}, overrides or {}):
            s = s.replace(**{k: parse_setting(k, v) for k, v in source.items() if k != "seed"})
        s = s.resolved(num_new_frames=num_new_frames, height=size[0], width=size[1], multiple=multiple)
        item.settings = s
        seed = (overrides or {}).get("seed", obj.get("seed"))
        item.seed = stable_seed(item.id, base_seed) if seed is None else parse_setting("seed", seed)
    except ValueError as e:
        item.error = str(e)
    return item


# ----------------------------------------------------------------------------- sweep grid


def parse_grid(specs=(), json_spec=None) -> dict[str, list]:
    """A grid {setting: [canonical values]} from `key=v1,v2` strings and/or a JSON object
    (text, or the path of a .json file) of `{key: [values]}`; keys keep their order."""
    grid = {}
    if json_spec:
        text = Path(json_spec).read_text() if not json_spec.lstrip().startswith("{") else json_spec
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise SettingsError(f"grid JSON: {e}") from None
        if not isinstance(obj, dict):
            raise SettingsError("grid JSON must be an object {setting: [values]}")
        for key, values in obj.items():
            grid[key] = values if isinstance(values, list) else [values]
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise SettingsError(f"--grid {spec!r}: expected KEY=V1,V2,...")
        grid[key.strip()] = values.split(",")
    if not grid:
        raise SettingsError("empty grid: give --grid KEY=V1,V2 or --grid-json")
    out = {}
    for key, values in grid.items():
        parsed = [parse_setting(key, v) for v in values]
        if not parsed or len(set(map(repr, parsed))) != len(parsed):
            raise SettingsError(f"grid {key}: values must be given and distinct, got {values}")
        out[key] = parsed
    return out


def _fmt(v) -> str:
    if isinstance(v, tuple):  # a per-step schedule
        return ",".join(map(_fmt, v))
    return ("on" if v else "off") if isinstance(v, bool) else (f"{v:g}" if isinstance(v, float) else str(v))


def combo_name(combo: dict) -> str:
    """The folder of one grid point, e.g. "resample=2_inversion=off"."""
    return "_".join(f"{k}={_fmt(v)}" for k, v in combo.items())


def sweep_combos(grid: dict) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
