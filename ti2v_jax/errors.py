"""The errors ti2v-jax raises for problems in what it was given (inputs, settings,
checkpoints, resources), as opposed to bugs.

Every message is one line that names the problem and, where there is one, what to do.
The command line prints it as `ti2v-jax COMMAND: error: MESSAGE` and exits with 2.
Each class also derives from the built-in exception a caller would expect
(`SettingsError` is a `ValueError`, `CheckpointNotFoundError` a `FileNotFoundError`, ...),
so `except ValueError` keeps working.
"""

from __future__ import annotations

import re


class TI2VError(Exception):
    """Base class: a problem with what ti2v-jax was given, described in one line."""


class SettingsError(TI2VError, ValueError):
    """A sampler setting (or a combination of them) is invalid or out of bounds."""


class InputError(TI2VError, ValueError):
    """An image, prompt, manifest or output path cannot be used."""


class OutputExistsError(InputError, FileExistsError):
    """An output exists and would be replaced (pass overwrite / --overwrite to replace it)."""


class CheckpointError(TI2VError, ValueError):
    """A checkpoint is not one ti2v-jax can read, or is corrupt, truncated or incomplete."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint (directory or file in it) does not exist."""


class IntegrityError(CheckpointError):
    """A checkpoint file's content differs from the hash recorded when it was written."""


class ResourceError(TI2VError, MemoryError):
    """A call would need more memory (or other resources) than the device has."""


def first_line(e: BaseException, *, limit: int = 300, with_type: bool = True) -> str:
    """An exception's message in one line, for quoting inside ours: its first line, cut at
    `limit` characters ("Type: first line" with `with_type`). tensorstore/orbax messages run to
    pages: their spec dump is dropped and the array they failed on is named."""
    text = str(e).strip()
    first = text.splitlines()[0].strip() if text else ""
    first = first.split(" See full TensorStore details")[0]
    first = first if len(first) <= limit else first[:limit] + "..."
    array = re.search(r"'path': '([^'/][^']*)'", text)
    if array:
        first += f" [array {array.group(1)}]"
    if not first:
        return type(e).__name__
    return f"{type(e).__name__}: {first}" if with_type else first
