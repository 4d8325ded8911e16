"""The environment variables ti2v-jax reads, parsed in one place.

Switches (TI2V_NO_VERIFY, TI2V_SKIP_RESOURCE_CHECK, TI2V_DEBUG) are booleans: 1/true/yes/on
turn them on, 0/false/no/off or empty (or unset) leave them off, in any case; anything else
is a one-line SettingsError naming the variable, so that `TI2V_NO_VERIFY=FALSE` never turns
verification off by being non-empty.
"""

from __future__ import annotations

import os

from ti2v_jax.errors import SettingsError

NO_VERIFY = "TI2V_NO_VERIFY"
SKIP_RESOURCE_CHECK = "TI2V_SKIP_RESOURCE_CHECK"
DEBUG = "TI2V_DEBUG"
SWITCHES = (NO_VERIFY, SKIP_RESOURCE_CHECK, DEBUG)
PROCESS_INDEX = "TI2V_PROCESS_INDEX"
PROCESS_COUNT = "TI2V_PROCESS_COUNT"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def flag(name: str) -> bool:
    """The boolean switch `name` (unset: False)."""
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"environment variable {name}={os.environ[name]!r} is not a switch: use 1/true/yes/on "
                        f"or 0/false/no/off")


def integer(name: str, *, low: int = 0) -> int | None:
    """The integer `name` holds (>= low), or None when it is unset or empty."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < low:
        raise SettingsError(f"environment variable {name}={os.environ[name]!r} must be an integer >= {low}")
    return n
