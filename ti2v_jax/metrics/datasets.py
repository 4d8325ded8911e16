"""TI2V-Zero's evaluation protocol on UCF101 and MUG as manifests: make the videos, then evaluate.

    ti2v-jax manifest ucf101 UCF-101-frames/ --out ucf.jsonl    # ucf.jsonl + ucf.real.jsonl
    ti2v-jax batch --model CKPT --manifest ucf.jsonl --out-dir gen/
    ti2v-jax evaluate --real ucf.real.jsonl --fake gen/ --i3d i3d_pretrained_400.pt --group-by prompt

The paper's scripts (`gen_video_ucf.py`, `gen_video_mug.py` with the loaders of
`dataset/datasets_ucf.py`, `datasets_mug.py`) make 1000 videos, item i from dataset entry
i mod N (UCF101: N = 90 (class, scene group) pairs of 9 classes; MUG: N = 40 (subject,
expression) pairs of 10 subjects), each from one clip drawn at random among the entry's
clips (numpy's legacy generator seeded with 1234, one draw per item, as the scripts'
`np.random.choice` after `setup_seed(1234)`), with the class or expression text as prompt.
Of the drawn clip, 16 frames are taken (UCF101: every 3rd frame when it has over 48, else
the first 16; MUG: every 6th when it has over 96, else 16 evenly spaced), center-cropped
and resized to 256x256; the first is the start image. UCF101 runs S=50, R=2; MUG S=10, R=4;
both 15 new frames, guidance 9, DDPM inversion.

Each builder gives the batch manifest's lines (id, image = the first frame, prompt,
seed = base seed + i, the settings) and the real clips' lines for `evaluate` (id, video,
frames, size, prompt, image, and the group fields: UCF101 `class` and `group` (gXX), MUG
`subject` and `expression`). The draws are the scripts' as long as nothing else draws from
numpy's global generator between items in their run, which their code does not do.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np

from ti2v_jax import atomic
from ti2v_jax.errors import InputError

SEED = 1234
COUNT = 1000
SIZE = 256
NUM_FRAMES = 16

UCF101_PROMPTS = {
    "ApplyEyeMakeup": "A person is applying eye makeup.",
    "BabyCrawling": "A Baby is crawling.",
    "BreastStroke": "A person is performing breaststroke.",
    "Drumming": "A person is drumming.",
    "HorseRiding": "A person is riding horse.",
    "Kayaking": "A person is kayaking.",
    "PlayingGuitar": "A person is playing Guitar.",
    "Surfing": "A person is surfing.",
    "ShavingBeard": "A person is shaving beard.",
}
UCF101_SCENES = 10
UCF101_SETTINGS = {"num_new_frames": 15, "steps": 50, "resample": 2, "guidance": 9.0, "inversion": True}

MUG_FEMALE = ("001", "002", "006", "046", "048")
MUG_MALE = ("007", "010", "013", "014", "020")
MUG_SESSION_SUBJECTS = ("002", "003", "049")   # their clips sit under <subject>/session0/
MUG_EXPRESSIONS = ("anger", "happiness", "sadness", "surprise")
MUG_SETTINGS = {"num_new_frames": 15, "steps": 10, "resample": 4, "guidance": 9.0, "inversion": True}


def _frame_names(clip_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(clip_dir) if n.endswith("jpg") or n.endswith("png"))


def _lines(i, clip_dir: Path, name, frames, prompt, seed, settings, fields):
    if not frames:
        raise InputError(f"{clip_dir}: no .jpg/.png frames")
    item_id = "%04d_%s" % (i, name)
    image = str((clip_dir / frames[0]).resolve())
    item = {"id": item_id, "image": image, "prompt": prompt, "seed": seed + i, **settings}
    real = {"id": item_id, "video": str(clip_dir.resolve()), "frames": frames, "size": [SIZE, SIZE],
            "prompt": prompt, "image": image, **fields}
    return item, real


def ucf101(frames_dir, *, count: int = COUNT, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(batch manifest lines, real clip lines) for UCF101 frame folders laid out as
    FRAMES_DIR/<Class>/v_<Class>_gXX_cYY/<frames>, as the paper's preprocessing writes them."""
    root = Path(frames_dir)
    classes = list(UCF101_PROMPTS)
    table, missing = {}, []
    for c in classes:
        for g in range(1, UCF101_SCENES + 1):
            table[c, g] = sorted(p for p in glob.glob(str(root / c / ("v_%s_g%02d_c*" % (c, g)))) if os.path.isdir(p))
            if not table[c, g]:
                missing.append(f"{c}/v_{c}_g{g:02d}_c*")
    if missing:
        raise InputError(f"{root}: UCF101 frame folders missing for {len(missing)} class/group pairs "
                         f"(e.g. {', '.join(missing[:3])}); expected FRAMES_DIR/<Class>/v_<Class>_gXX_cYY/")
    rng = np.random.RandomState(seed)
    items, reals = [], []
    n = len(classes) * UCF101_SCENES
    for i in range(count):
        k = i % n
        # The script's indexing, as written: scene = k // 10 (not // 9), so groups g01..g09 are used.
        cls, group = classes[k % len(classes)], k // UCF101_SCENES + 1
        clip = Path(str(rng.choice(table[cls, group], size=1)[0]))
        names = _frame_names(clip)
        names = (names[::3] if len(names) > 48 else names)[:NUM_FRAMES]
        item, real = _lines(i, clip, clip.name, names, UCF101_PROMPTS[cls], seed, UCF101_SETTINGS,
                            {"class": cls, "group": "g%02d" % group})
        items.append(item)
        reals.append(real)
    return items, reals


def mug(data_dir, *, count: int = COUNT, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(batch manifest lines, real clip lines) for MUG laid out as DIR/<subject>/<expression>/<take>/
    (subjects 002, 003, 049: DIR/<subject>/session0/<expression>/<take>/)."""
    root = Path(data_dir)
    subjects = MUG_FEMALE + MUG_MALE
    table = {(s, e): [] for s in subjects for e in MUG_EXPRESSIONS}
    for s in subjects:
        # The script lists "session0" twice for these subjects, so each of their takes is drawn
        # from a list holding it twice; kept, since it decides which take a draw picks.
        sessions = [root / s] if s not in MUG_SESSION_SUBJECTS else [root / s / "session0"] * 2
        for base in sessions:
            for e in MUG_EXPRESSIONS:
                d = base / e
                if d.is_dir():
                    table[s, e] += [d / t for t in sorted(os.listdir(d)) if (d / t).is_dir()]
    missing = [f"{s}/{e}" for (s, e), v in table.items() if not v]
    if missing:
        raise InputError(f"{root}: no MUG takes for {len(missing)} subject/expression pairs "
                         f"(e.g. {', '.join(missing[:3])}); expected DIR/<subject>/<expression>/<take>/")
    rng = np.random.RandomState(seed)
    items, reals = [], []
    n = len(subjects) * len(MUG_EXPRESSIONS)
    for i in range(count):
        k = i % n
        s, e = subjects[k % len(subjects)], MUG_EXPRESSIONS[k // len(subjects)]
        clip = Path(str(rng.choice([str(p) for p in table[s, e]], size=1)[0]))
        depth = 4 if s in MUG_SESSION_SUBJECTS else 3
        name = "_".join(clip.parts[-depth:])
        names = _frame_names(clip)
        if len(names) > 96:
            names = names[::6][:NUM_FRAMES]
        elif names:
            names = [names[j] for j in np.linspace(0, len(names) - 1, num=NUM_FRAMES, dtype=int)]
        who = "A woman with the expression of slight %s on her face." if s in MUG_FEMALE else \
            "A man with the expression of slight %s on his face."
        item, real = _lines(i, clip, name, names, who % e, seed, MUG_SETTINGS, {"subject": s, "expression": e})
        items.append(item)
        reals.append(real)
    return items, reals


BUILDERS = {"ucf101": ucf101, "mug": mug}


def real_manifest_path(out) -> Path:
    """Where the real clips' manifest goes beside OUT.jsonl: OUT.real.jsonl."""
    out = Path(out)
    return out.with_name((out.name[:-len(".jsonl")] if out.name.endswith(".jsonl") else out.name) + ".real.jsonl")


def write_manifests(dataset: str, src, out, *, count: int = COUNT, seed: int = SEED,
                    overwrite: bool = False) -> tuple[Path, Path]:
    """Write OUT (the batch manifest) and OUT.real.jsonl (the real clips); both or neither."""
    if dataset not in BUILDERS:
        raise InputError(f"unknown dataset {dataset!r}; choose one of {', '.join(BUILDERS)}")
    if not Path(src).is_dir():
        raise InputError(f"{src}: not a folder")
    if count < 1:
        raise InputError(f"count must be positive, got {count}")
    out, real = Path(out), real_manifest_path(out)
    if not overwrite:
        for p in (out, real):
            if p.exists():
                raise InputError(f"{p} exists; pass --overwrite to replace it")
    items, reals = BUILDERS[dataset](src, count=count, seed=seed)
    # Both written before either replaces its file: on exit `out` is replaced, then `real`.
    with atomic.replacing(real) as real_tmp, atomic.replacing(out) as out_tmp:
        for tmp, rows in ((out_tmp, items), (real_tmp, reals)):
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out, real
