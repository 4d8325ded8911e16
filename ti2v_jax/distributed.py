"""Several processes on one job: which items are whose, and `jax.distributed` start-up.

- Processes: item i of the id-sorted manifest belongs to process i % count (`share`).
  Index and count come from arguments, else TI2V_PROCESS_INDEX / TI2V_PROCESS_COUNT, else
  `jax.process_index()` / `jax.process_count()` (`process_share`).
- `jax.distributed.initialize()` runs when asked, or by default when the environment names
  a multi-process launch (a coordinator address, several TPU workers, SLURM or Open MPI
  tasks). Under it a "mesh" or "pmap" call spans every host, so `ti2v_jax.batch` runs its
  processes in lockstep, starting with one all-gather of the per-group work
  (`allgather_counts`).
- CPU devices: XLA:CPU sizes its thread pool to max(cores, the process's CPU devices), and
  some of its kernels (Eigen's convolutions with few output channels) sum in an order that
  follows that size. `initialize_distributed` gives every process the pool one
  process holding all the job's CPU devices would have (`PJRT_NPROC`, unless set), so a
  job of several processes makes the same video, bit for bit, as that one process.
"""

from __future__ import annotations

import os
import re

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
    """`jax.distributed.initialize()` (arguments auto-detected) if `wants_distributed(flag)`,
    then `match_cpu_threads` for the job's process count. Call it before anything uses JAX."""
    if not wants_distributed(flag):
        return False
    import jax
    from jax._src import distributed as jax_distributed  # the process count before the backends start

    jax.distributed.initialize()
    processes = getattr(getattr(jax_distributed, "global_state", None), "num_processes", None)
    if isinstance(processes, int) and processes >= 1:  # else (another jax) the pools are left to XLA
        match_cpu_threads(processes)
    return True


def local_cpu_devices() -> int:
    """CPU devices each process will have: `jax_num_cpu_devices`, else XLA_FLAGS' forced count, else 1."""
    import jax
    n = jax.config.jax_num_cpu_devices
    if n is not None and n >= 0:
        return int(n)
    forced = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(forced[-1]) if forced else 1


def cpu_only() -> bool:
    """Whether JAX is limited to the CPU (`jax_platforms` or JAX_PLATFORMS is "cpu")."""
    import jax
    return (jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS") or "").strip().lower() == "cpu"


def match_cpu_threads(processes: int) -> int | None:
    """Give this process the XLA:CPU thread pool of one process holding all `processes` x
    `local_cpu_devices()` CPU devices, by setting PJRT_NPROC (read when the CPU backend
    starts) to max(cores, that count). Left alone when PJRT_NPROC or NPROC is set, or when a
    process has a single CPU device and JAX is not limited to the CPU (the pool then only
    serves host work). Returns the size set, or None."""
    if os.environ.get("PJRT_NPROC") or os.environ.get("NPROC"):
        return None
    devices = local_cpu_devices()
    if devices <= 1 and not cpu_only():
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    size = max(cores, int(processes) * devices)
    os.environ["PJRT_NPROC"] = str(size)
    return size


def allgather_counts(counts: np.ndarray) -> np.ndarray:
    """(processes, n): every process's `counts` (n,), gathered; all processes must call it."""
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, counts.size)
