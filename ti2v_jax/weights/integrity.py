"""A converted checkpoint's integrity: a hash of every file, recorded last and checked at load.

    checksums.json                {"algorithm": "sha256", "files": {relative path: {"sha256", "size"}}}
                                  of every other file, written last

`verify_checkpoint` re-hashes the files against `checksums.json` (`load` does so too, via
`verify_for_loading`, for the files it reads), so a corrupted, truncated or incomplete copy
is an `IntegrityError` / `CheckpointNotFoundError` naming the file, never a silently
different video. Checkpoints written before the record existed load with a warning.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
from pathlib import Path

from ti2v_jax import env
from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, IntegrityError
from ti2v_jax.weights.components import COMPONENTS, SCHEDULER, TOKENIZER
from ti2v_jax.weights.layout import FORMAT, INDEX, read_index, read_json

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"
HASH = "sha256"  # hashlib's, with SHA-NI/ARMv8 instructions on current CPUs; `sha256sum` can check it too
NO_VERIFY_ENV = env.NO_VERIFY


def _hash_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, HASH).hexdigest()


def _hash_many(paths: list) -> list[str]:
    """Hashes of many files, several at a time (hashlib releases the GIL: disk speed, all cores)."""
    if len(paths) < 2:
        return [_hash_file(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(paths))) as ex:
        return list(ex.map(_hash_file, paths))


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).as_posix() != CHECKSUMS)


def _is_layout_file(name: str) -> bool:
    """True for a file of the converted layout itself: the index and everything in a component's,
    the tokenizer's or the scheduler's folder (what loading reads)."""
    top = name.split("/", 1)[0]
    return name == INDEX or ("/" in name and (top in COMPONENTS or top in (TOKENIZER, SCHEDULER)))


def write_checksums(root) -> dict:
    """Record the hash and size of every file under `root` in `root/checksums.json` (written last)."""
    root = Path(root)
    names = _all_files(root)
    digests = _hash_many([root / n for n in names])
    record = {"algorithm": HASH, "files": {n: {HASH: h, "size": (root / n).stat().st_size}
                                           for n, h in zip(names, digests)}}
    (root / CHECKSUMS).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def read_checksums(directory) -> dict | None:
    """The `checksums.json` record of a converted directory, or None for one written before it existed."""
    path = Path(directory) / CHECKSUMS
    if not path.exists():
        return None
    record = read_json(path, "checksum record")
    files = record.get("files")
    if record.get("algorithm") != HASH or not isinstance(files, dict) or \
            not all(isinstance(v, dict) and isinstance(v.get(HASH), str) and isinstance(v.get("size"), int)
                    for v in files.values()):
        raise CheckpointError(f"checksum record {path} is damaged or not a {HASH} record; re-convert the "
                              f"checkpoint or restore {CHECKSUMS} from a good copy")
    return record


def _check_files(directory: Path, record: dict, components=None) -> dict:
    """Check the recorded files (those of `components` and the shared ones, or all) against the record."""
    keep = None if components is None else set(components) | {TOKENIZER, SCHEDULER}
    in_scope = lambda n: keep is None or "/" not in n or n.split("/", 1)[0] in keep
    files = {n: v for n, v in record["files"].items() if in_scope(n)}
    names = sorted(files)
    for n in names:  # cheap checks first: missing and truncated files need no hashing
        path = directory / n
        if not path.is_file():
            raise CheckpointNotFoundError(f"{path} is missing: the checkpoint is incomplete (its {CHECKSUMS} "
                                          f"lists {len(record['files'])} files); copy it again")
        size = path.stat().st_size
        if size != files[n]["size"]:
            how = "truncated (or edited)" if size < files[n]["size"] else "longer than recorded (edited?)"
            raise IntegrityError(f"{path} is {how} ({size} bytes, {files[n]['size']} recorded in {CHECKSUMS}); "
                                 f"the checkpoint is damaged: copy or convert it again")
    digests = _hash_many([directory / n for n in names])
    bad = [n for n, h in zip(names, digests) if h != files[n][HASH]]
    if bad:
        more = f" (and {len(bad) - 1} more file{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise IntegrityError(f"{directory / bad[0]}{more}: content differs from its {HASH} in {CHECKSUMS} "
                             f"(corrupted); copy or convert the checkpoint again")
    unrecorded = [n for n in _all_files(directory) if n not in record["files"] and in_scope(n)]
    # A record that leaves out a file the checkpoint is made of (emptied, or an entry removed)
    # would let that file change unnoticed: only files beside the layout (a README) may be unrecorded.
    uncovered = [n for n in unrecorded if _is_layout_file(n)]
    if uncovered:
        more = f" (and {len(uncovered) - 1} more)" if len(uncovered) > 1 else ""
        raise IntegrityError(f"{directory / uncovered[0]}{more} is not covered by {CHECKSUMS} (it lists "
                             f"{len(record['files'])} files): the record is incomplete or was edited; copy or "
                             f"convert the checkpoint again")
    return {"directory": str(directory.absolute()), "algorithm": HASH, "files": len(names),
            "bytes": int(sum(files[n]["size"] for n in names)), "unrecorded": unrecorded}


def verify_checkpoint(directory, *, components=None) -> dict:
    """Re-hash a converted checkpoint's files against its `checksums.json`.

    components: only the files of these networks (and the shared ones: index, tokenizer,
    scheduler); default every recorded file. Returns {"directory", "algorithm", "files"
    (number checked), "bytes", "unrecorded" (files beside the layout that are not in the
    record, e.g. a README added by hand; not an error)}. Raises CheckpointNotFoundError for
    a missing directory or file, IntegrityError for a truncated or corrupted file or for a
    file of the layout (index, network, tokenizer, scheduler) the record leaves out (an
    emptied or partial record), CheckpointError for a
    directory that is not a converted checkpoint or has no record (written before
    ti2v-jax recorded checksums: re-convert it to get one). Each message is one line
    naming the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"checkpoint directory {directory} does not exist")
    index = read_index(directory)
    if index.get("format") != FORMAT:
        raise CheckpointError(f"{directory} is not a converted ti2v-jax checkpoint (only those carry "
                              f"{CHECKSUMS}); convert it with `ti2v-jax convert`")
    record = read_checksums(directory)
    if record is None:
        raise CheckpointError(f"{directory} has no {CHECKSUMS} (written by an older ti2v-jax); it cannot be "
                              f"verified: convert it again to record its checksums")
    return _check_files(directory, record, components)


def verify_for_loading(directory, components, *, verify: bool = True) -> dict | None:
    """What `load` runs: verify the files it reads, unless `verify=False` or TI2V_NO_VERIFY=1.

    A checkpoint without a record loads with a logged warning. Returns the summary, or None.
    """
    if not verify or env.flag(NO_VERIFY_ENV):
        return None
    directory = Path(directory)
    record = read_checksums(directory)
    if record is None:
        log.warning("%s has no %s (written by an older ti2v-jax): its files cannot be verified; convert it "
                    "again to record their checksums", directory, CHECKSUMS)
        return None
    return _check_files(directory, record, components)
