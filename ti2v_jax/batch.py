"""Batch jobs: a manifest of (image, prompt) pairs -> one video per line, resumable.

    pipe = TI2VZeroPipeline.from_pretrained("ckpt/")
    res = run_batch(pipe, "pairs.jsonl", "out/", batch_size=8, parallel="mesh")
    res = run_sweep(pipe, "pairs.jsonl", "sweep/", {"resample": [0, 2, 4], "inversion": [True, False]})

A manifest line is `{"id": "cat-01", "image": "imgs/cat.png", "prompt": "a cat running"}`
plus optional per-item settings (the fields of `ti2v_jax.settings.SamplerSettings`:
num_new_frames, steps, resample, guidance, eta, inversion, slide, baseline, height,
width) and `seed`. Relative image paths are
resolved against the manifest's directory. Each line gives OUT/<id>.<ext> (a directory
for png) and OUT/<id>.json, its metadata.

Decisions:
- Precedence: sweep overrides > the item's own settings > job defaults (CLI flags).
- Seeds: the item's `seed`, else `stable_seed(id, base_seed)` (sha256 of the id), so a
  video depends on its id and settings only, never on grouping, batching or devices.
- Completion is the metadata file, written last and atomically (temp + rename), next to
  a video written atomically by `io.save_video`. A rerun skips complete ids and redoes
  the rest; an item finished with other settings is skipped and reported as `stale`.
- Bad items (missing fields, invalid settings, unreadable image, a failed batch or save)
  go to OUT/errors.jsonl (errors-<process>.jsonl with several processes), which each run
  rewrites, and the job goes on; a rerun retries them. Manifest-level problems (bad
  JSON, a missing, unsafe or duplicate id) are fatal before any compute. A job whose
  first pipeline call fails stops with that error (a cause every item shares: the model,
  memory, a bug), after logging the call's items; the summary says when every failed
  item failed the same way.
- One compiled program per group of equal static settings: items are grouped by all
  settings, and every batch of a group, the last one included (padded by repeating an
  item), has the same size.
- Shared output folders: workers started on one OUT claim each item before computing it
  (OUT/.claims/<id>.claim, created exclusively, refreshed while held); a claim not
  refreshed for `claim_timeout` seconds, or held by a dead process on this host, is taken
  over, so N workers do each item once and a crashed worker's items are picked up.
  Lockstep (multi-host) runs split by index instead.
- Processes: item i of the id-sorted manifest belongs to process i % count. Index and
  count come from arguments, else TI2V_PROCESS_INDEX / TI2V_PROCESS_COUNT, else
  `jax.process_index()` / `jax.process_count()`. Under `jax.distributed` a "mesh" or
  "pmap" call spans every host, so processes run in lockstep: one all-gather of the
  per-group work up front, then every process makes the same number of calls per
  group (a process out of work runs a dummy item and drops it).
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import itertools
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ti2v_jax import cleanup, env, settings
from ti2v_jax.claims import CLAIM_TIMEOUT, Claims
from ti2v_jax.errors import InputError, SettingsError

FORMATS = ("gif", "mp4", "png")
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
    folder: "_Folder | None" = None  # where it is written (a sweep's items span several folders)

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
        s = s.resolved(num_new_frames=num_new_frames, height=size[0], width=size[1])
        if s.height % multiple or s.width % multiple:
            raise SettingsError(f"height and width must be multiples of {multiple}, got {s.height}x{s.width}")
        item.settings = s
        seed = (overrides or {}).get("seed", obj.get("seed"))
        item.seed = stable_seed(item.id, base_seed) if seed is None else parse_setting("seed", seed)
    except ValueError as e:
        item.error = str(e)
    return item


def share(ids, index: int, count: int) -> list:
    """This process's ids: the i-th of the sorted ids when i % count == index."""
    return [x for i, x in enumerate(sorted(ids)) if i % count == index]


def process_share(index=None, count=None) -> tuple[int, int]:
    """(index, count): the arguments, else TI2V_PROCESS_INDEX/COUNT, else jax's processes."""
    index = env.integer(env.PROCESS_INDEX) if index is None else index
    count = env.integer(env.PROCESS_COUNT, low=1) if count is None else count
    if index is None or count is None:
        import jax
        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if not (count >= 1 and 0 <= index < count):
        raise SettingsError(f"process index {index} / count {count}: need 0 <= index < count")
    return int(index), int(count)


def wants_distributed(flag: bool | None = None) -> bool:
    """True if `flag`; with None, when the environment names a multi-process launch."""
    if flag is not None:
        return flag
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")
                or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
                or (env.integer("SLURM_NTASKS") or 1) > 1
                or (env.integer("OMPI_COMM_WORLD_SIZE") or 1) > 1)


def initialize_distributed(flag: bool | None = None) -> bool:
    """`jax.distributed.initialize()` (arguments auto-detected) if `wants_distributed(flag)`."""
    if not wants_distributed(flag):
        return False
    import jax
    jax.distributed.initialize()
    return True


# ----------------------------------------------------------------------------- files


def output_paths(out_dir: Path, item_id: str, fmt: str) -> tuple[Path, Path]:
    video = out_dir / (item_id if fmt == "png" else f"{item_id}.{fmt}")
    return video, out_dir / f"{item_id}.json"


def write_json_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with cleanup.temporary(tmp), open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_meta(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class _ErrorLog:
    """OUT/errors.jsonl (errors-<index>.jsonl with several shares): one line per failed item.

    A run drops the entries of the ids it is about to handle (`ids`: done ones and ones it
    retries) and keeps the rest, so workers sharing the folder keep each other's entries;
    lines are appended whole (O_APPEND), so concurrent workers do not interleave them."""

    def __init__(self, out_dir: Path, index: int, count: int, ids=()):
        self.path = out_dir / ("errors.jsonl" if count == 1 else f"errors-{index}.jsonl")
        if count == 1:  # a split run's files, now superseded
            for p in out_dir.glob("errors-*.jsonl"):
                p.unlink(missing_ok=True)
        self._drop(set(ids))
        self.entries = []

    def _drop(self, ids) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return
        keep = []
        for line in lines:
            try:
                if json.loads(line).get("id") in ids:
                    continue
            except (ValueError, AttributeError):
                continue
            keep.append(line)
        if len(keep) == len(lines):
            return
        if not keep:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def add(self, item: Item, stage: str, reason: str) -> None:
        entry = {"id": item.id, "line": item.line, "stage": stage, "reason": reason,
                 "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.entries.append(entry)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _leftovers(out_dir: Path, ids) -> dict:
    """{id: [paths]}: temporaries a killed run left behind (io.save_video's and ours:
    `.<name>.*.tmp*`) for `ids`, from one listing of `out_dir`."""
    wanted, found = set(ids), collections.defaultdict(list)
    for p in out_dir.glob(".*.tmp*"):
        parts = p.name[1:].split(".")  # ids may hold dots: try every prefix
        for i in range(1, len(parts)):
            if ".".join(parts[:i]) in wanted:
                found[".".join(parts[:i])].append(p)
                break
    return found


def _remove_paths(paths) -> None:
    import shutil
    for p in paths:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- running


@dataclass
class BatchResult:
    out_dir: Path
    process: tuple[int, int]
    done: list = field(default_factory=list)      # ids generated by this run
    skipped: list = field(default_factory=list)   # ids already complete
    stale: list = field(default_factory=list)     # complete, but made with other settings/seed/prompt
    errors: list = field(default_factory=list)    # entries written to the errors file
    calls: int = 0                                # pipeline calls (batches), dummies included
    claimed: list = field(default_factory=list)   # ids left to another worker that held their claim

    def common_failure(self) -> str | None:
        """"<stage>: <first reason>" when nothing was generated and every one of several failed
        items failed at the same stage with the same kind of error (one cause, not N)."""
        if self.done or len(self.errors) < 2:
            return None
        kinds = {(e["stage"], e["reason"] if e["stage"] == "manifest" else e["reason"].split(":")[0])
                 for e in self.errors}
        return f"{self.errors[0]['stage']}: {self.errors[0]['reason']}" if len(kinds) == 1 else None

    def summary(self) -> str:
        s = (f"{self.out_dir}: {len(self.done)} generated, {len(self.skipped)} already done, "
             f"{len(self.errors)} failed")
        if self.claimed:
            s += f", {len(self.claimed)} in progress in another worker"
        same = self.common_failure()
        if same:
            s += f"; all {len(self.errors)} failed the same way ({same})"
        if self.stale:
            s += f"; WARNING {len(self.stale)} finished items were made with other settings (kept)"
        return s


def _allgather_counts(counts: np.ndarray) -> np.ndarray:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, counts.size)


def _load(item: Item) -> np.ndarray:
    from ti2v_jax import io
    h, w = item.settings.height, item.settings.width
    return io.to_uint8(io.load_image(item.image, (h, w)))  # exact: the pipeline maps it back


def _plan(items, mine, fmt, max_items):
    """(group keys, {key: this process's pending items}); keys from every valid item of
    every process, so all processes hold the same list. Logs invalid items, notes done ones
    (each in its own folder)."""
    groups = {it.group(): [] for it in items if it.error is None}
    keys = sorted(groups, key=repr)
    for it in sorted((it for it in items if it.id in mine), key=lambda it: it.id):
        f = it.folder
        if it.error is not None:
            f.log.add(it, "manifest", it.error)
            continue
        meta = _finished(f.out_dir, it, fmt)
        if meta is None:
            groups[it.group()].append(it)
            continue
        f.res.skipped.append(it.id)
        if (meta.get("settings"), meta.get("seed"), meta.get("prompt")) != (it.settings.to_dict(), it.seed,
                                                                             it.prompt):
            f.res.stale.append(it.id)
    if max_items is not None:
        left = max_items
        for k in keys:
            groups[k], left = groups[k][:left], max(0, left - len(groups[k]))
    return keys, groups


def _finished(out_dir: Path, it: Item, fmt: str):
    """The metadata of `it` if its video and metadata are in `out_dir`, else None."""
    video_path, meta_path = output_paths(out_dir, it.id, fmt)
    return _read_meta(meta_path) if meta_path.is_file() and video_path.exists() else None


def _next_batch(queue, size, bar, fmt):
    """Up to `size` items whose images load, and their images; failures are logged.

    Where the item's folder has claims, only items this worker claims: one another worker
    holds is left to it (res.claimed), one finished meanwhile is skipped (res.skipped); a
    claimed item's leftover temporaries are removed."""
    batch, images = [], []
    while queue and len(batch) < size:
        it = queue.popleft()
        f = it.folder
        if f.claims is not None:
            if not f.claims.acquire(it.id):
                f.res.claimed.append(it.id)
                bar.update(1)
                continue
            if _finished(f.out_dir, it, fmt) is not None:  # another worker finished it meanwhile
                f.claims.release(it.id)
                f.res.skipped.append(it.id)
                bar.update(1)
                continue
            _remove_paths(f.leftovers.pop(it.id, ()))
        try:
            images.append(_load(it))
            batch.append(it)
        except Exception as e:  # unreadable image: this item only
            f.log.add(it, "image", f"{type(e).__name__}: {e}")
            f.release(it)
            bar.update(1)
    return batch, images


@dataclass
class _Folder:
    """One output folder of a run: its claims, error log, leftovers and result."""
    out_dir: Path
    res: BatchResult
    log: _ErrorLog
    claims: Claims | None
    leftovers: dict

    def release(self, it: Item) -> None:
        if self.claims is not None:
            self.claims.release(it.id)


def run_batch(pipe, manifest, out_dir, *, defaults: dict | None = None, overrides: dict | None = None,
              base_seed: int = 0, batch_size: int | None = None, parallel: str = "mesh", fmt: str = "gif",
              fps: float = 8, process_index: int | None = None, process_count: int | None = None,
              max_items: int | None = None, progress: bool = True, lockstep: bool | None = None,
              model_name: str | None = None, claim_timeout: float | None = CLAIM_TIMEOUT,
              _points: list | None = None) -> BatchResult:
    """Generate every manifest item of this process's share that is not complete in `out_dir`.

    defaults / overrides: settings by manifest name (see module docstring for precedence).
    batch_size: items per process per pipeline call (default per device: the batch the
    pipeline's saved programs were compiled for (`ti2v-jax plan --save-executables`), else
    `platforms.default_batch_size`; times the local device count for "mesh"/"pmap"). max_items: stop after this many pending items (a job
    in chunks). lockstep: None = automatic (several jax processes and "mesh"/"pmap").
    claim_timeout: workers sharing `out_dir` claim each item before computing it (see
    `Claims`), so each item is done once; a claim not refreshed for this many seconds
    (its worker crashed or hangs) is taken over. None: no claims (one worker per folder).
    Lockstep runs never claim: their processes split the items by index and must make
    the same calls. (_points: `run_sweep`'s [(out_dir, overrides)]; a list of results then.)
    """
    points = _points if _points is not None else [(Path(out_dir), overrides)]
    results = _run(pipe, manifest, points, defaults=defaults, base_seed=base_seed, batch_size=batch_size,
                   parallel=parallel, fmt=fmt, fps=fps, process_index=process_index, process_count=process_count,
                   max_items=max_items, progress=progress, lockstep=lockstep, model_name=model_name,
                   claim_timeout=claim_timeout)
    return results if _points is not None else results[0]


def _run(pipe, manifest, points, *, defaults, base_seed, batch_size, parallel, fmt, fps, process_index,
         process_count, max_items, progress, lockstep, model_name, claim_timeout) -> list[BatchResult]:
    """`run_batch` over several (out_dir, overrides) points at once: items of every point are
    grouped by their static settings, so points that differ only in guidance, eta or
    resample values share batches (one compiled program); each point keeps its own folder,
    claims, error log and result."""
    import socket

    import jax
    from tqdm import tqdm

    import ti2v_jax
    from ti2v_jax import io

    if fmt not in FORMATS:
        raise SettingsError(f"format must be one of {FORMATS}, got {fmt!r}")
    if batch_size is None:
        from ti2v_jax.platforms import default_batch_size
        saved = getattr(pipe, "executables", None)
        per_device = (saved and saved.batch_per_device()) or default_batch_size(jax.default_backend())
        batch_size = per_device * (1 if parallel == "none" else jax.local_device_count())
    if batch_size < 1:
        raise SettingsError(f"batch_size must be >= 1, got {batch_size}")
    index, count = process_share(process_index, process_count)
    if lockstep is None:
        lockstep = jax.process_count() > 1 and parallel != "none"
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    mine = set(share([obj["id"] for _, obj in rows], index, count))
    items, folders = [], []
    for out_dir, overrides in points:
        point = [prepare_item(n, obj, manifest.parent, defaults=defaults, overrides=overrides,
                              base_seed=base_seed, size=pipe.default_size, multiple=pipe.vae_scale,
                              num_new_frames=pipe.default_num_new_frames)
                 for n, obj in rows]
        out_dir.mkdir(parents=True, exist_ok=True)
        leftovers = _leftovers(out_dir, mine)
        claims = None if lockstep or claim_timeout is None else Claims(out_dir, claim_timeout)
        if claims is None:  # the folder is ours alone: every leftover is garbage now
            _remove_paths(p for paths in leftovers.values() for p in paths)
        log = _ErrorLog(out_dir, index, count, mine)
        folder = _Folder(out_dir, BatchResult(out_dir=out_dir, process=(index, count)), log, claims, leftovers)
        folder.res.errors = log.entries
        for it in point:
            it.folder = folder
        items += point
        folders.append(folder)

    keys, groups = _plan(items, mine, fmt, max_items)
    todo = sum(map(len, groups.values()))
    counts = np.array([len(groups[k]) for k in keys], np.int64)
    most = _allgather_counts(counts).max(axis=0) if lockstep and len(keys) else counts

    bar = tqdm(total=todo, unit="item", disable=not progress, dynamic_ncols=True,
               desc=f"ti2v-jax batch {index + 1}/{count}" if count > 1 else "ti2v-jax batch")
    common = {"model": model_name or pipe.name, "dtype": str(pipe.dtype), "num_frames": pipe.num_frames,
              "ti2v_jax_version": ti2v_jax.__version__, "jax_version": jax.__version__,
              "backend": jax.default_backend(), "devices": jax.device_count(), "parallel": parallel,
              "process": [index, count], "format": fmt, "fps": fps,
              "worker": {"host": socket.gethostname(), "pid": os.getpid()}}
    calls = generated = 0
    try:
        for k, n_max in zip(keys, most):
            if not n_max:
                continue
            gbs = int(min(batch_size, n_max))  # one program shape for the whole group
            queue = collections.deque(groups[k])
            dummy = settings.SamplerSettings.with_static_key(k)
            for step in range(math.ceil(n_max / gbs)):
                batch, images = _next_batch(queue, gbs, bar, fmt)
                if not batch and not lockstep:
                    break
                real = len(batch)
                prompts, seeds = [it.prompt for it in batch], [it.seed for it in batch]
                item_settings = [it.settings for it in batch]
                if not batch:  # lockstep, nothing left here: a dummy call keeps the hosts together
                    images = [np.zeros((dummy.height, dummy.width, 3), np.uint8)]
                    prompts, seeds, item_settings = [""], [0], [dummy]
                pad = gbs - len(images)
                images, prompts, seeds = images + images[-1:] * pad, prompts + prompts[-1:] * pad, \
                    seeds + seeds[-1:] * pad
                item_settings = item_settings + item_settings[-1:] * pad
                t0 = time.perf_counter()
                calls += 1
                try:
                    videos = pipe(images, prompts, item_settings, seed=seeds, parallel=parallel).frames
                except Exception as e:
                    for it in batch:
                        it.folder.log.add(it, "generate", f"{type(e).__name__}: {e}")
                        it.folder.release(it)
                    bar.update(real)
                    if not generated:  # the job's first call failed: a cause every item shares; stop
                        raise
                    continue
                generated += 1
                dt = time.perf_counter() - t0
                for it, video in zip(batch, videos):
                    f = it.folder
                    video_path, meta_path = output_paths(f.out_dir, it.id, fmt)
                    meta = {"id": it.id, "prompt": it.prompt, "image": it.image, "seed": it.seed,
                            "settings": it.settings.to_dict(), "output": video_path.name,
                            "frames": int(video.shape[0]), **common,
                            "timing": {"batch_seconds": round(dt, 3), "seconds_per_item": round(dt / real, 3),
                                       "batch_items": real, "batch_padded_to": gbs,
                                       "first_of_group": step == 0},  # may include compiling
                            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                timespec="seconds")}
                    try:
                        io.save_video(video, video_path, fps=fps)
                        write_json_atomic(meta, meta_path)  # last: its presence marks completion
                        f.res.done.append(it.id)
                    except Exception as e:
                        f.log.add(it, "save", f"{type(e).__name__}: {e}")
                    f.release(it)
                    bar.update(1)
                bar.set_postfix(failed=sum(len(f.log.entries) for f in folders), refresh=False)
    finally:
        bar.close()
        for f in folders:
            f.res.calls = calls
            if f.claims is not None:
                f.claims.close()  # releases what is still held (an interrupt, an error)
    return [f.res for f in folders]


# ----------------------------------------------------------------------------- sweeps


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


def run_sweep(pipe, manifest, out_dir, grid: dict, **kwargs) -> dict[str, BatchResult]:
    """`run_batch` over every point of `grid` (overriding the items' own settings), each
    into OUT/<combo_name>/, each resumable. Points whose settings differ only in guidance,
    eta or resample values run together: their items share batches of one compiled
    program. kwargs: as `run_batch` (not `overrides`)."""
    combos = sweep_combos(grid)
    points = [(Path(out_dir) / combo_name(c), c) for c in combos]
    results = run_batch(pipe, manifest, out_dir, _points=points, **kwargs)
    return {combo_name(c): r for c, r in zip(combos, results)}
