"""The converted checkpoint's layout: its names, its index, and the JSON reader its files go through;
and `read_folder`, the one detection of any checkpoint folder's layout.

    model_index.json              {"format": "ti2v-jax", "format_version", "dtype", "components", ...}
    <component>/config.json       the diffusers/transformers config, as it came
    <component>/params/           orbax checkpoint of the nested parameter dict
    tokenizer/                    the tokenizer files, as they came
    scheduler/scheduler_config.json
    checksums.json                the integrity record (`weights.integrity`), written last

`weights.checkpoint` writes and reads the directory; `weights.integrity` checks its files.
`read_folder` tells the three layouts apart (converted, diffusers, original ModelScope) and
parses the file that tells it (model_index.json or configuration.json) once: a load makes
one `CheckpointFolder` and hands it down to every reader.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, first_line

FORMAT = "ti2v-jax"
FORMAT_VERSION = 1
INDEX = "model_index.json"
PARAMS = "params"
CONFIGURATION = "configuration.json"  # the original ModelScope release's (`weights.modelscope`)


@dataclasses.dataclass(frozen=True)
class CheckpointFolder:
    """A checkpoint folder as `read_folder` found it, read once and passed down to whatever reads it.

    format: "converted" | "diffusers" | "modelscope". index: its model_index.json (converted and
    diffusers layouts), configuration: its configuration.json (ModelScope), each parsed once;
    None where the layout has none. Readers take them as they are and never modify them.
    """
    path: Path
    format: str
    index: dict | None = None
    configuration: dict | None = None


def folder_path(folder) -> Path:
    """The directory of a `CheckpointFolder` or of a path."""
    return folder.path if isinstance(folder, CheckpointFolder) else Path(folder)


def read_folder(directory) -> CheckpointFolder:
    """The layout of a checkpoint directory, with the file that tells it parsed (the one detection;
    a `CheckpointFolder` is returned as it is).

    Raises CheckpointNotFoundError when `directory` does not exist (or is a file), and
    CheckpointError (one line) when it is none of the three layouts.
    """
    if isinstance(directory, CheckpointFolder):
        return directory
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointNotFoundError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"checkpoint {directory} is a file; expected a checkpoint directory")
    index_path = directory / INDEX
    if index_path.is_file():
        index = read_json(index_path, "model index")  # damaged JSON: a CheckpointError naming it
        if index.get("format") == FORMAT:
            return CheckpointFolder(directory, "converted", index=index)
        if "_class_name" in index:
            return CheckpointFolder(directory, "diffusers", index=index)
        raise CheckpointError(f"{index_path} is neither a ti2v-jax index (\"format\": \"{FORMAT}\") nor a "
                              f"diffusers pipeline index (\"_class_name\")")
    configuration = modelscope_configuration(directory)
    if configuration is not None:
        return CheckpointFolder(directory, "modelscope", configuration=configuration)
    if (directory / CONFIGURATION).is_file():
        raise CheckpointError(f"{directory / CONFIGURATION} has no model.model_cfg: not an original "
                              f"ModelScope text-to-video release")
    raise CheckpointNotFoundError(f"{directory} is not a checkpoint directory: no {INDEX} (converted or "
                                  f"diffusers layout) and no {CONFIGURATION} (original ModelScope layout)")


def modelscope_configuration(directory) -> dict | None:
    """`directory/configuration.json` parsed if it is an original ModelScope release's (a JSON object
    whose model has a model_cfg), else None."""
    path = Path(directory) / CONFIGURATION
    if not path.is_file():
        return None
    try:
        configuration = json.loads(path.read_bytes())
    except ValueError:  # not JSON, or not UTF-8: not a release's
        return None
    model = configuration.get("model") if isinstance(configuration, dict) else None
    return configuration if isinstance(model, dict) and "model_cfg" in model else None


def is_converted(directory) -> bool:
    """True for a directory written by `save_converted`."""
    try:
        return read_folder(directory).format == "converted"
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


def check_index_fields(folder) -> None:
    """A one-line CheckpointError naming the file and field when the model_index.json of `folder`
    (a `CheckpointFolder` or a directory) gives one of `INDEX_INTEGERS` as something other than a
    large enough integer (e.g. null)."""
    folder = read_folder(folder)
    if folder.index is None:
        return
    index, path = folder.index, folder.path / INDEX
    for field, low in INDEX_INTEGERS.items():
        v = index.get(field, low)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise CheckpointError(f"{path}: {field}={v!r} is not an integer >= {low}; fix the field or remove it")


def read_config(directory, name: str) -> dict:
    return read_json(Path(directory) / name / "config.json", f"{name}: config file")
