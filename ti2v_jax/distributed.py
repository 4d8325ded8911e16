"""Several processes on one job: which items are whose, and `jax.distributed` start-up.

- Processes: item i of the id-sorted manifest belongs to process i % count (`share`).
  Index and count come from arguments, else TI2V_PROCESS_INDEX / TI2V_PROCESS_COUNT, else
  `jax.process_index()` / `jax.process_count()` (`process_share`).
- `jax.distributed.initialize()` runs when asked, or by default when the environment names
  a multi-process launch (a coordinator address, several TPU workers, SLURM or Open MPI
  tasks). Under it a "mesh" or "pmap" call spans every host, so `ti2v_jax.batch` runs its
  processes in lockstep, starting with one all-gather of the per-group work
  (`allgather_counts`).
"""

from __future__ import annotations

import os

import numpy as np

from ti2v_jax import env
from ti2v_jax.errors import SettingsError


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


def allgather_counts(counts: np.ndarray) -> np.ndarray:
    """(processes, n): every process's `counts` (n,), gathered; all processes must call it."""
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, counts.size)
