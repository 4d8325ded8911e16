"""Data-parallel batching over devices, with the same results as one device.

`run_batched(fn, args, mode=...)` splits a batch over devices three ways:

- "none": `jax.jit(fn)` on one device (the reference result);
- "mesh": `jax.jit` of a `jax.shard_map` over a 1-D `jax.sharding.Mesh` whose
  axis is named "data"; inputs and outputs are `NamedSharding(mesh, P("data"))`
  and each device runs `fn` on its own slice. This is the path for TPU pods and
  multi-GPU hosts;
- "pmap": `jax.pmap` over a (devices, per_device, ...) reshape of the batch.

All three compile with ti2v-jax's compiler options for the devices' platform
(`ti2v_jax.platforms`), so they run the same kernels.

The contract with `fn`: it takes batched arrays (leading axis = items) and
every output item depends only on the same input item. In particular all
randomness must come from a per-item key passed in the batch
(`per_item_keys`), never from one key split by position, so an item's result
does not depend on which batch it is in, where, or on how many devices.
A batch that does not divide by the device count is padded by repeating its
last item and the padding is cut from the outputs, which the contract makes
harmless. Every output leaf must have the leading batch axis.

Running on a multi-host TPU pod (or several GPU hosts): start the same
program on every host, call `distributed.initialize_distributed(True)` first thing
(`jax.distributed.initialize()` plus, on CPUs, one thread-pool size for every process), and
have each process pass ITS OWN items (its slice of the global batch):

    distributed.initialize_distributed(True)
    seeds = all_seeds[jax.process_index()::jax.process_count()]
    out = run_batched(sample, (per_item_keys(seeds), images), replicated=state,
                      mode="mesh")
    # `out` holds this process's items, in the order given.

The global batch is assembled with `jax.make_array_from_process_local_data`
over a mesh of all `jax.devices()`, and each process gets its rows back.
Processes may hold different numbers of items; each is padded to the largest.
With "pmap" each process simply maps over its local devices (`fn` has no
cross-item collectives), so it also works on a pod, one process per host.

Weights are placed once. `replicated(devices)` is the placement the programs take
(`loading.load(..., devices=...)` restores parameters straight into it), and a
`replicated` argument that already has it is passed on as is: no parameter byte
moves on any call. One that does not (host arrays, weights on one device) is placed
on the first call and the placed copy is kept for later calls with the same weights
object (identity of its leaves). Both "mesh" and "pmap" (and, across processes,
`make_array_from_process_local_data`) follow this rule.
"""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ti2v_jax.platforms import compiler_options, jit

MODES = ("none", "mesh", "pmap")
_CACHE_SIZE = 32
_cache: OrderedDict = OrderedDict()


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The 1-D mesh, axis "data", that "mesh" mode splits batches over (default: all devices)."""
    devs = tuple(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("devices is empty")
    return Mesh(np.array(devs, dtype=object), ("data",))


def replicated(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Sharding:
    """Where weights live to be used as they are by `run_batched` on `devices`.

    One device (or None: the first local device): that device. Several: a full copy on
    each, `NamedSharding(data_mesh(devices), P())`, which "mesh" and "pmap" calls on the
    same devices take without moving a byte.
    """
    if devices is None:
        return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    devs = tuple(devices)
    if len(devs) == 1:
        return jax.sharding.SingleDeviceSharding(devs[0])
    return NamedSharding(data_mesh(devs), P())


def _fits(x, sharding) -> bool:
    """True when `x` is a jax.Array already laid out as `sharding` (no transfer needed)."""
    if not isinstance(x, jax.Array):
        return False
    try:
        return x.sharding.is_equivalent_to(sharding, x.ndim)
    except Exception:  # noqa: BLE001 - shardings of other kinds / device sets: not equivalent
        return False


class _PlacedOnce:
    """A replicated argument as a program takes it, placed at most once per weights object.

    Leaves already laid out as wanted are passed on as they are; the others are placed
    (`place`) on the first call, and the result is kept for as long as the same leaf
    objects come back (weak references: a new weights object places anew).
    """

    def __init__(self):
        self.refs, self.placed = None, None

    def get(self, tree, place):
        leaves = jax.tree.leaves(tree)
        if self.refs is not None and len(self.refs) == len(leaves) \
                and all(r() is x for r, x in zip(self.refs, leaves)):
            return self.placed
        placed = place(tree)
        try:
            self.refs, self.placed = [weakref.ref(x) for x in leaves], placed
        except TypeError:  # leaves without weak references (Python scalars): no reuse
            self.refs, self.placed = None, None
        return placed


def _place_leaves(tree, shardings, put):
    """`tree` with each leaf that is not laid out as its sharding replaced by `put(leaf, sharding)`."""
    leaves, treedef = jax.tree.flatten(tree)
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = [shardings] * len(leaves)
    return jax.tree.unflatten(treedef, [x if _fits(x, s) else put(x, s) for x, s in zip(leaves, shardings)])


def place(tree, sharding):
    """`tree` laid out as `sharding` (leaves that already are stay as they are); across
    processes each fills its own devices from its host copy."""
    if sharding.is_fully_addressable:
        return _place_leaves(tree, sharding, jax.device_put)
    return _place_leaves(tree, sharding, lambda x, s: jax.make_array_from_process_local_data(s, _host(x)))


def per_item_keys(seeds: Sequence[int], *, typed: bool = True, impl: str | None = None):
    """One PRNG key per seed: (B,) typed keys, or raw uint32 (B, 2) with typed=False.

    Item i is exactly `jax.random.key(seeds[i])` (resp. `jax.random.PRNGKey`),
    whatever the other seeds, so a seed gives the same item in any batch.
    """
    seeds = [int(s) for s in np.asarray(seeds).reshape(-1).tolist()]
    if not seeds:
        raise ValueError("per_item_keys needs at least one seed")
    data = np.stack([np.asarray(jax.random.key_data(jax.random.key(s, impl=impl))) for s in seeds])
    return jax.random.wrap_key_data(data, impl=impl) if typed else jnp.asarray(data)


def run_batched(fn: Callable, args, *, replicated: Any = None, mode: str = "none",
                devices: Sequence[jax.Device] | None = None, saved=None):
    """`fn(*args)` (or `fn(replicated, *args)`) over a batch split across devices.

    args: a tuple of positional arguments (a single non-tuple is one argument),
    each a pytree whose leaves have the batch axis first, all of the same size.
    replicated: an optional pytree given whole to every device (model weights,
    contexts); it is passed as `fn`'s first argument.
    mode: "none", "mesh" or "pmap" (see the module docstring). devices: the
    devices to use; default all devices ("mesh"), the local ones ("pmap"), the
    default device ("none").

    The jitted/pmapped callable is built once per (fn, mode, devices) and kept
    (an LRU of the last 32), so repeated calls with the same shapes do not
    recompile. Give static options with `functools.partial(fn, ...)`: partials
    of the same function with equal hashable arguments share one entry; a
    partial holding arrays is keyed by identity, so build it once and reuse it.
    Keep weights in `replicated`, not in a partial: closed-over arrays become
    compile-time constants. Weights laid out as `replicated(devices)` (what
    `loading.load(..., devices=devices)` gives) are used as they are; others are
    placed on the first call and that copy is reused while the same weights come back.

    Returns `fn`'s outputs as jax arrays, batch axis first. "mesh" outputs are
    sharded along "data" when the batch divides the device count; trimming a
    padded batch gathers it (fine for videos, which go to the host anyway).

    saved: an `executables.Executables` folder; a program saved there for exactly this call
    (`fn`, shapes, devices, versions) runs instead of compiling ("none" and "mesh" modes).
    """
    return batched(fn, mode=mode, devices=devices, replicated=replicated is not None)(
        *_as_tuple(args), replicated=replicated, saved=saved)


def batched(fn: Callable, *, mode: str = "none", devices=None, replicated: bool = False,
            cache: OrderedDict | None = None, cache_size: int = _CACHE_SIZE):
    """The cached callable behind `run_batched`: `b(*args, replicated=..., saved=...)`.

    cache: the LRU to keep it in (default this module's, for `run_batched`; a pipeline passes
    its own, so its programs live and die with it), at most `cache_size` entries."""
    cache = _cache if cache is None else cache
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    devs = None if devices is None else tuple(devices)
    if devs is not None and not devs:
        raise ValueError("devices is empty")
    key = (_fn_key(fn), mode, devs, replicated)
    hit = cache.get(key)
    if hit is None:
        hit = _Batched(fn, mode, devs, replicated)
        cache[key] = hit
        if len(cache) > cache_size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return hit


def clear_cache() -> None:
    """Drop the cached jitted/pmapped callables (and what their functions hold)."""
    _cache.clear()


def _fn_key(fn):
    if isinstance(fn, functools.partial):
        key = ("partial", _fn_key(fn.func), fn.args, tuple(sorted(fn.keywords.items())))
        try:
            hash(key)
            return key
        except TypeError:
            pass
    # Identity; safe because the cache entry keeps `fn` alive, so its id is not reused.
    return ("id", id(fn))


def _as_tuple(args) -> tuple:
    return args if isinstance(args, tuple) else (args,)


class _Batched:
    def __init__(self, fn, mode, devices, replicated):
        self.fn, self.mode, self.devices, self.has_rep = fn, mode, devices, replicated
        if replicated:
            def body(rep, batch):
                return fn(rep, *batch)
        else:
            def body(batch):
                return fn(*batch)
        platform = (devices[0] if devices else jax.local_devices()[0]).platform
        # jax.pmap takes no compiler options, and a pmap call transfers in_axes=None arguments
        # on every call: `_call` compiles it ahead of time and places the weights itself, once.
        self.pmap_options = compiler_options(platform) if mode == "pmap" else {}
        self.aot = OrderedDict()
        self.rep = _PlacedOnce()
        self.saved = None
        if mode == "none":
            self.n = 1
            self.compiled = jit(body, platform=platform)
        elif mode == "pmap":
            # devices=None lets pmap use the local devices of each process (pods).
            self.n = len(devices) if devices is not None else jax.local_device_count()
            self.compiled = jax.pmap(body, in_axes=(None, 0) if replicated else 0,
                                     devices=None if devices is None else list(devices))
            # pmap refuses arrays already committed to one device (e.g. computed there): place
            # the (devices, per_device, ...) inputs one slice per device ourselves.
            pdevs = list(devices) if devices is not None else jax.local_devices()[:self.n]
            pmesh = Mesh(np.array(pdevs, dtype=object), ("pmap",))
            self.lead = NamedSharding(pmesh, P("pmap"))
            # A full copy on each of those devices: what the program takes for the weights (it
            # accepts any equivalent layout, e.g. `replicated(devices)`'s over the "data" axis).
            self.whole = NamedSharding(pmesh, P())
        else:
            devs = devices if devices is not None else tuple(jax.devices())
            self.mesh = data_mesh(devs)
            self.data = NamedSharding(self.mesh, P("data"))
            self.whole = NamedSharding(self.mesh, P())
            self.local_n = sum(d.process_index == jax.process_index() for d in devs)
            self.multiprocess = jax.process_count() > 1
            # shard_map: each device traces and runs `fn` on its own items, the program one
            # device runs alone on a batch of that size (so the same kernels and the same bits;
            # partitioning the global program instead (GSPMD) let XLA pick other fusions and
            # moved results by a uint8 level on some CPUs), and trace-time choices that depend
            # on the batch size (e.g. `layers.map_in_blocks`) see the per-device size.
            # check_vma=False: Pallas kernels (the TPU flash attention) declare outputs without
            # the mesh-varying type shard_map would check; each device's items stay its own.
            body = jax.shard_map(body, mesh=self.mesh, out_specs=P("data"), check_vma=False,
                                 in_specs=(P(), P("data")) if replicated else (P("data"),))
            self.compiled = jit(body, platform=platform, out_shardings=self.data)

    def __call__(self, *args, replicated=None, saved=None):
        self.saved = saved
        if self.has_rep != (replicated is not None):
            raise ValueError("this callable was built with" + ("" if self.has_rep else "out")
                             + " a replicated argument")
        b = _batch_size(args)
        if self.mode == "none":
            if self.devices is not None:
                args = jax.device_put(args, self.devices[0])
                if self.has_rep:
                    one = jax.sharding.SingleDeviceSharding(self.devices[0])
                    replicated = self.rep.get(replicated, lambda t: _place_leaves(t, one, jax.device_put))
            return self._call(replicated, args)
        if self.mode == "pmap":
            per = -(-b // self.n)
            args = jax.tree.map(lambda x: _reshape_lead(_pad(x, per * self.n), (self.n, per)), args)
            args = jax.device_put(args, self.lead)
            out = self._call(replicated, args)
            return jax.tree.map(lambda y: y.reshape((-1,) + tuple(y.shape[2:]))[:b], out)
        return self._call_mesh(replicated, args, b)

    def program_devices(self) -> tuple:
        """The devices the compiled program runs on, in its order."""
        if self.mode == "mesh":
            return tuple(self.mesh.devices.flat)
        return (self.devices[0] if self.devices else jax.local_devices()[0],)

    def _call(self, replicated, args):
        a = (replicated, args) if self.has_rep else (args,)
        if self.mode != "pmap":
            program = None
            if self.saved is not None:
                from ti2v_jax.executables import program_key

                devs = self.program_devices()
                program = self.saved.get(program_key(fn=self.fn, params=replicated, args=args, devices=devs), devs)
            return (program or self.compiled)(*a)
        # One ahead-of-time compilation of the pmap per input signature (as its own cache would).
        leaves, tree = jax.tree.flatten(a)
        key = (tree, tuple(jax.typeof(x) for x in leaves))
        c = self.aot.get(key)
        if c is None:
            c = self.aot[key] = self.compiled.lower(*a).compile(compiler_options=self.pmap_options or None)
            if len(self.aot) > _CACHE_SIZE:
                self.aot.popitem(last=False)
        else:
            self.aot.move_to_end(key)
        # Place the inputs as the compiled program takes them; it refuses any other layout, so
        # nothing moves inside the call. The weights: as they are when they fit (e.g. placed
        # by `replicated(devices)`), else placed once and reused.
        # The batch is already one slice per device (`__call__`). Layouts are given per leaf, not
        # read from `c.input_shardings`: that leaves out inputs the program never reads.
        if self.has_rep:
            a = (self.rep.get(replicated, lambda t: _place_leaves(t, self.whole, jax.device_put)), args)
        return c(*a)

    def _call_mesh(self, replicated, args, b):
        if not self.multiprocess:
            total = -(-b // self.mesh.size) * self.mesh.size
            args = jax.device_put(jax.tree.map(lambda x: _pad(x, total), args), self.data)
            if self.has_rep:
                replicated = self.rep.get(replicated, lambda t: _place_leaves(t, self.whole, jax.device_put))
            return jax.tree.map(lambda y: y[:b], self._call(replicated, args))
        from jax.experimental import multihost_utils

        # Every process pads its own items to the same local size, a multiple of
        # its device count; the global batch is the processes' blocks in order.
        most = int(np.max(multihost_utils.process_allgather(np.int64(b))))
        local = -(-most // self.local_n) * self.local_n
        args = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.data, _host(_pad(x, local))), args)
        if self.has_rep:
            replicated = self.rep.get(replicated, lambda t: _place_leaves(
                t, self.whole, lambda x, s: jax.make_array_from_process_local_data(s, _host(x))))
        out = self._call(replicated, args)
        out = multihost_utils.global_array_to_host_local_array(out, self.mesh, P("data"))
        return jax.tree.map(lambda y: y[:b], out)


def _batch_size(args) -> int:
    leaves = jax.tree.leaves(args)
    if not leaves:
        raise ValueError("run_batched needs at least one batched array")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes:
        raise ValueError("every batched leaf needs a leading batch axis; got a scalar")
    if len(sizes) != 1:
        raise ValueError(f"batched leaves disagree on the batch size: {sorted(sizes)}")
    b = sizes.pop()
    if b == 0:
        raise ValueError("empty batch")
    return b


def _pad(x, total: int):
    """Repeat the last item until the leading axis is `total`."""
    b = x.shape[0] if hasattr(x, "shape") else len(x)
    if b == total:
        return x
    idx = np.concatenate([np.arange(b), np.full(total - b, b - 1)])
    if isinstance(x, jax.Array):
        return x[idx]  # also right for typed PRNG key arrays
    return np.asarray(x)[idx]


def _reshape_lead(x, lead: tuple):
    return x.reshape(lead + tuple(x.shape[1:]))


def _host(x):
    # Typed keys cannot go through numpy; their raw data can.
    return x if isinstance(x, jax.Array) else np.asarray(x)
