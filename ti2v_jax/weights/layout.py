"""The converted checkpoint's layout: its names, its index, and the JSON reader its files go through.

    model_index.json              {"format": "ti2v-jax", "format_version", "dtype", "components", ...}
    <component>/config.json       the diffusers/transformers config, as it came
    <component>/params/           orbax checkpoint of the nested parameter dict
    tokenizer/                    the tokenizer files, as they came
    scheduler/scheduler_config.json
    checksums.json                the integrity record (`weights.integrity`), written last

`weights.checkpoint` writes and reads the directory; `weights.integrity` checks its files.
"""

from __future__ import annotations

import json
from pathlib import Path

from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, first_line

FORMAT = "ti2v-jax"
FORMAT_VERSION = 1
INDEX = "model_index.json"
PARAMS = "params"


def is_converted(directory) -> bool:
    """True for a directory written by `save_converted` (the one format check that needs no
    converter; `weights.convert.detect_format` tells every layout apart)."""
    try:
        return read_index(directory).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_json(path, what: str = "file") -> dict:
    """A JSON object from `path`; a missing, unreadable or non-object file is a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{what} {path} not found")
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {path} is not valid JSON ({first_line(e)})") from None
    except OSError as e:
        raise CheckpointError(f"{what} {path} cannot be read ({first_line(e)})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what} {path} holds a JSON {type(value).__name__}, expected an object")
    return value


def read_index(directory) -> dict:
    return read_json(Path(directory) / INDEX, "checkpoint index")


# model_index.json fields a checkpoint may recommend (the pipeline's K and N), with their least values.
INDEX_INTEGERS = {"num_frames": 2, "num_new_frames": 1}


def check_index_fields(directory) -> None:
    """A one-line CheckpointError naming the file and field when `directory`'s model_index.json
    gives one of `INDEX_INTEGERS` as something other than a large enough integer (e.g. null)."""
    path = Path(directory) / INDEX
    if not path.is_file():
        return
    index = read_json(path, "model index")
    for field, low in INDEX_INTEGERS.items():
        v = index.get(field, low)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise CheckpointError(f"{path}: {field}={v!r} is not an integer >= {low}; fix the field or remove it")


def read_config(directory, name: str) -> dict:
    return read_json(Path(directory) / name / "config.json", f"{name}: config file")
