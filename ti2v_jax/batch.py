"""Batch jobs: a manifest of (image, prompt) pairs -> one video per line, resumable.

    pipe = TI2VZeroPipeline.from_pretrained("ckpt/")
    res = run_batch(pipe, "pairs.jsonl", "out/", batch_size=8, parallel="mesh")
    res = run_sweep(pipe, "pairs.jsonl", "sweep/", {"resample": [0, 2, 4], "inversion": [True, False]})

The manifest's lines, their settings and seeds, and a sweep's grid: `ti2v_jax.manifest`.
Which process does which item, and `jax.distributed`: `ti2v_jax.distributed`. Here: the
job loop, the output folders, the error log and the results. Each line gives
OUT/<id>.<ext> (a directory for png) and OUT/<id>.json, its metadata.

Decisions:
- Completion is the metadata file, written last and atomically (`atomic.write_json`), next to
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
- Processes: each takes its share of the items (`distributed.share`). Under
  `jax.distributed` a "mesh" or "pmap" call spans every host, so processes run in
  lockstep: one all-gather of the per-group work up front, then every process makes the
  same number of calls per group (a process out of work runs a dummy item and drops it).
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ti2v_jax import atomic, settings
from ti2v_jax.claims import CLAIM_TIMEOUT, Claims
from ti2v_jax.distributed import allgather_counts, process_share, share
from ti2v_jax.errors import SettingsError
from ti2v_jax.manifest import Item, combo_name, prepare_item, read_manifest, sweep_combos

FORMATS = ("gif", "mp4", "png")


# ----------------------------------------------------------------------------- files


def output_paths(out_dir: Path, item_id: str, fmt: str) -> tuple[Path, Path]:
    video = out_dir / (item_id if fmt == "png" else f"{item_id}.{fmt}")
    return video, out_dir / f"{item_id}.json"


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
        atomic.write_text(self.path, "".join(line + "\n" for line in keep))

    def add(self, item: Item, stage: str, reason: str) -> None:
        entry = {"id": item.id, "line": item.line, "stage": stage, "reason": reason,
                 "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.entries.append(entry)
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _leftovers(out_dir: Path, ids) -> dict:
    """{id: [paths]}: temporaries a killed run left behind (io.save_video's and `atomic`'s,
    `.<name>.tmp-*`, and earlier versions' `.<name>.*.tmp*`) for `ids`, from one listing of `out_dir`."""
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
    made: bool = False  # this run made out_dir

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
        made = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        leftovers = _leftovers(out_dir, mine)
        claims = None if lockstep or claim_timeout is None else Claims(out_dir, claim_timeout)
        if claims is None:  # the folder is ours alone: every leftover is garbage now
            _remove_paths(p for paths in leftovers.values() for p in paths)
        log = _ErrorLog(out_dir, index, count, mine)
        folder = _Folder(out_dir, BatchResult(out_dir=out_dir, process=(index, count)), log, claims, leftovers,
                         made)
        folder.res.errors = log.entries
        for it in point:
            it.folder = folder
        items += point
        folders.append(folder)

    keys, groups = _plan(items, mine, fmt, max_items)
    todo = sum(map(len, groups.values()))
    counts = np.array([len(groups[k]) for k in keys], np.int64)
    most = allgather_counts(counts).max(axis=0) if lockstep and len(keys) else counts

    bar = tqdm(total=todo, unit="item", disable=not progress, dynamic_ncols=True,
               desc=f"ti2v-jax batch {index + 1}/{count}" if count > 1 else "ti2v-jax batch")
    common = {"model": model_name or pipe.name, "dtype": str(pipe.dtype), "num_frames": pipe.num_frames,
              "ti2v_jax_version": ti2v_jax.__version__, "jax_version": jax.__version__,
              "backend": jax.default_backend(), "devices": jax.device_count(), "parallel": parallel,
              "process": [index, count], "format": fmt, "fps": fps,
              "worker": {"host": socket.gethostname(), "pid": os.getpid()}}
    calls = generated = 0
    ended = False
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
                        try:
                            atomic.write_json(meta_path, meta)  # last: its presence marks completion
                        except BaseException as e:  # a video without (or with old) metadata: no half item
                            _remove_paths([video_path])
                            if isinstance(e, OSError) and e.errno is not None and e.filename is None:
                                raise OSError(e.errno, e.strerror or str(e), str(meta_path)) from None
                            raise
                        f.res.done.append(it.id)
                    except Exception as e:
                        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                            raise  # a full disk fails every item: stop (claims released below)
                        f.log.add(it, "save", f"{type(e).__name__}: {e}")
                    f.release(it)
                    bar.update(1)
                bar.set_postfix(failed=sum(len(f.log.entries) for f in folders), refresh=False)
        ended = True
    finally:
        bar.close()
        for f in folders:
            f.res.calls = calls
            if f.claims is not None:
                f.claims.close()  # releases what is still held (an interrupt, an error)
            if f.made and not ended:  # a folder this run made and an error left empty: not kept
                with contextlib.suppress(OSError):
                    f.out_dir.rmdir()
    return [f.res for f in folders]


# ----------------------------------------------------------------------------- sweeps


def run_sweep(pipe, manifest, out_dir, grid: dict, **kwargs) -> dict[str, BatchResult]:
    """`run_batch` over every point of `grid` (overriding the items' own settings), each
    into OUT/<combo_name>/, each resumable. Points whose settings differ only in guidance,
    eta or resample values run together: their items share batches of one compiled
    program. kwargs: as `run_batch` (not `overrides`)."""
    combos = sweep_combos(grid)
    points = [(Path(out_dir) / combo_name(c), c) for c in combos]
    results = run_batch(pipe, manifest, out_dir, _points=points, **kwargs)
    return {combo_name(c): r for c, r in zip(combos, results)}
