"""ti2v_jax.parallel on 4 forced CPU devices (and 2 processes x 2 devices).

The device count is fixed when jax initialises, and other test files in this
pytest process have already imported jax, so the checks run in fresh Python
subprocesses with XLA_FLAGS set; the tests assert on the JSON they print.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A toy sampler: per-item key -> noise -> a small matmul scan; weights replicated.
TOY = textwrap.dedent("""
    import functools, json, jax, jax.numpy as jnp, numpy as np
    from ti2v_jax.parallel import run_batched, per_item_keys

    W = np.random.RandomState(0).randn(8, 8).astype(np.float32) / 3  # numpy: no backend yet
    X0 = np.random.RandomState(1).randn(8, 8).astype(np.float32)
    SEEDS = [11, 22, 33, 44, 55, 66, 77, 88]
    TRACES = []

    def toy(w, keys, x0, scale=1.0):
        TRACES.append(1)
        def item(k, x):
            noise = scale * jax.random.normal(k, (6, 8))
            def step(x, n):
                x = jnp.tanh(x @ w + n)
                return x, x.sum()
            return jax.lax.scan(step, x, noise)
        return jax.vmap(item)(keys, x0)

    def run(idx, mode, fn=toy):
        keys = per_item_keys([SEEDS[i] for i in idx])
        out = run_batched(fn, (keys, X0[list(idx)]), replicated=W, mode=mode)
        return [np.asarray(o) for o in out]
""")


def _env(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _run(script, devices=4, args=(), timeout=300):
    proc = subprocess.run([sys.executable, "-c", TOY + textwrap.dedent(script), *args],
                          env=_env(devices), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.slow
def test_mesh_and_pmap_equal_single_device_and_position_free():
    r = _run("""
        assert jax.device_count() == 4
        # Reference: every item alone, one device.
        ref = [run([i], "none") for i in range(5)]
        ref = [np.concatenate([r[j] for r in ref]) for j in range(2)]
        errs, base = {}, {}
        for mode in ("none", "mesh", "pmap"):
            for b in (1, 3, 4, 5):
                out = run(range(b), mode)
                assert [o.shape for o in out] == [(b, 8), (b, 6)], (mode, b, [o.shape for o in out])
                errs[f"{mode}{b}"] = max(float(np.abs(o - r[:b]).max()) for o, r in zip(out, ref))
            base[mode] = out
        # Batch position: the same items reordered, and item 2 inside another batch.
        order = [4, 0, 3, 1, 2]
        for mode in ("mesh", "pmap"):
            perm = run(order, mode)
            errs[mode + "_perm"] = max(float(np.abs(p - b[order]).max()) for p, b in zip(perm, base[mode]))
            other = run([7, 6, 2], mode)
            errs[mode + "_other"] = max(float(np.abs(o[2] - b[2]).max()) for o, b in zip(other, base[mode]))
        print("RESULT", json.dumps(errs))
    """)
    print(r)
    assert len(r) == 12 + 4
    assert max(r.values()) <= 1e-6


@pytest.mark.slow
def test_padding_trimming_and_sharding():
    r = _run("""
        from jax.sharding import NamedSharding
        res = {}
        keys = per_item_keys(SEEDS[:4])
        out = run_batched(toy, (keys, X0[:4]), replicated=W, mode="mesh")
        s = out[0].sharding
        res["sharded"] = isinstance(s, NamedSharding) and s.spec[0] == "data" and len(s.device_set) == 4
        # padding: a batch of 6 on 4 devices is padded to 8 (the last item repeated)
        seen = []
        def spy(w, keys, x0):
            seen.append(x0.shape)
            return toy(w, keys, x0)
        out = run_batched(spy, (per_item_keys(SEEDS[:6]), X0[:6]), replicated=W, mode="mesh")
        res["mesh_padded_shape"] = list(seen[-1])
        res["mesh_out"] = [list(o.shape) for o in out]
        out = run_batched(spy, (per_item_keys(SEEDS[:6]), X0[:6]), replicated=W, mode="pmap")
        res["pmap_padded_shape"] = list(seen[-1])
        res["pmap_out"] = [list(o.shape) for o in out]
        # explicit device subsets
        out = run_batched(toy, (keys, X0[:4]), replicated=W, mode="mesh", devices=jax.devices()[:2])
        res["subset"] = sorted(d.id for d in out[0].sharding.device_set)
        out = run_batched(toy, (keys, X0[:4]), replicated=W, mode="none", devices=[jax.devices()[3]])
        res["none_dev"] = sorted(d.id for d in out[0].devices())
        # no replicated argument, raw uint32 keys
        f = jax.vmap(lambda k, x: x * jax.random.uniform(k, x.shape))
        out = run_batched(f, (per_item_keys(SEEDS[:3], typed=False), X0[:3]), mode="pmap")
        ref = run_batched(f, (per_item_keys(SEEDS[:3], typed=False), X0[:3]))
        res["raw_keys_err"] = float(np.abs(np.asarray(out) - np.asarray(ref)).max())
        print("RESULT", json.dumps(res))
    """)
    print(r)
    assert r["sharded"]
    # Both bodies see the per-device slice (mesh: shard_map): 6 items -> 4 devices x 2
    assert r["mesh_padded_shape"] == [2, 8] and r["mesh_out"] == [[6, 8], [6, 6]]
    assert r["pmap_padded_shape"] == [2, 8] and r["pmap_out"] == [[6, 8], [6, 6]]
    assert r["subset"] == [0, 1]
    assert r["none_dev"] == [3]
    assert r["raw_keys_err"] <= 1e-6


@pytest.mark.slow
def test_callable_cached_no_recompile():
    r = _run("""
        res = {}
        for mode in ("none", "mesh", "pmap"):
            TRACES.clear()
            run(range(3), mode); run(range(3), mode); run([5, 6, 7], mode)
            res[mode] = len(TRACES)
        # equal partials share one entry
        TRACES.clear()
        run(range(3), "mesh", functools.partial(toy, scale=0.5))
        run(range(3), "mesh", functools.partial(toy, scale=0.5))
        res["partial"] = len(TRACES)
        print("RESULT", json.dumps(res))
    """)
    assert r == {"none": 1, "mesh": 1, "pmap": 1, "partial": 1}, r


def test_per_item_keys():
    r = _run("""
        k = per_item_keys([3, 5, 2**40])
        a = [bool(np.array_equal(jax.random.key_data(k[i]), jax.random.key_data(jax.random.key(s))))
             for i, s in enumerate([3, 5, 2**40])]
        raw = per_item_keys([3, 5], typed=False)
        b = bool(np.array_equal(raw, np.stack([jax.random.PRNGKey(3), jax.random.PRNGKey(5)])))
        print("RESULT", json.dumps({"typed": a, "raw": b, "shape": list(raw.shape),
                                    "dtype": str(raw.dtype), "typed_shape": list(k.shape)}))
    """, devices=1)
    assert r == {"typed": [True] * 3, "raw": True, "shape": [2, 2], "dtype": "uint32",
                 "typed_shape": [3]}


def test_bad_arguments():
    from ti2v_jax.parallel import run_batched

    with pytest.raises(ValueError, match="mode"):
        run_batched(lambda x: x, (), mode="shard")
    import numpy as np

    with pytest.raises(ValueError, match="batch size"):
        run_batched(lambda x, y: x, (np.zeros((3, 2)), np.zeros((4, 2))))
    with pytest.raises(ValueError, match="leading batch axis"):
        run_batched(lambda x: x, (np.float32(1.0),))


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multiprocess_mesh_matches_single_device():
    """2 processes x 2 CPU devices, uneven local batches (3 and 1 items), as on a pod; the
    (host) weights become a global array once, not on every call."""
    script = TOY + SPY + textwrap.dedent("""
        import sys
        pid, port = int(sys.argv[1]), sys.argv[2]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid,
                                   initialization_timeout=120)
        assert jax.device_count() == 4 and jax.local_device_count() == 2
        idx = [0, 1, 2] if pid == 0 else [3]
        PARAM_SHAPES, WATCH_IDS = set(), {id(W)}  # the (8, 8) global output has W's shape: watch W itself
        moves = []
        for _ in range(3):
            out = run(idx, "mesh")
            moves.append(len(MOVES)); MOVES.clear()
        print("RESULT", json.dumps([o.tolist() for o in out] + [moves]), flush=True)
    """)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", script, str(pid), port], env=_env(2),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        if p.returncode != 0 and "gloo" in err.lower() and "not" in err.lower():
            pytest.skip("jax built without CPU gloo collectives")
        assert p.returncode == 0, err[-4000:]
        line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT "):]))
    ref = _run("""
        print("RESULT", json.dumps([o.tolist() for o in run([0, 1, 2, 3], "none")]))
    """, devices=1)
    import numpy as np

    for r in results:
        print("weights placed per call:", r[2])
        assert r[2] == [1, 0, 0]
    for j in range(2):
        got = np.concatenate([np.asarray(results[0][j]), np.asarray(results[1][j])])
        err = float(np.abs(got - np.asarray(ref[j])).max())
        print("multiprocess max abs err", j, err)
        assert err <= 1e-6


# Spies for "weights placed once": every placement (device_put, make_array_from_process_local_data)
# that creates a parameter-shaped buffer the input did not already hold, and what the compiled
# program is handed as its weights on each call.
SPY = textwrap.dedent("""
    import jax.stages
    from ti2v_jax import parallel as par

    def _ptrs(a):
        try:
            return {s.data.unsafe_buffer_pointer() for s in a.addressable_shards}
        except AttributeError:  # numpy / host data: no device buffers
            return set()

    MOVES, SEEN = [], []
    _put, _make, _ccall = jax.device_put, jax.make_array_from_process_local_data, jax.stages.Compiled.__call__

    WATCH_IDS = set()  # or name the weights' leaves themselves (when other arrays share their shape)

    def _record(kind, x, y, param_shapes):
        for xi, yi in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
            watched = tuple(np.shape(yi)) in param_shapes or id(xi) in WATCH_IDS
            if watched and yi is not xi and not _ptrs(yi) <= _ptrs(xi):
                MOVES.append(kind)

    def spy_put(x, *a, **k):
        y = _put(x, *a, **k)
        _record("device_put", x, y, PARAM_SHAPES)
        return y

    def spy_make(sharding, x, *a, **k):
        y = _make(sharding, x, *a, **k)
        _record("make_array", x, y, PARAM_SHAPES)
        return y

    def spy_ccall(self, *args, **kw):
        SEEN.append(jax.tree.leaves(args[0]))
        return _ccall(self, *args, **kw)

    jax.device_put, jax.make_array_from_process_local_data = spy_put, spy_make
    jax.stages.Compiled.__call__ = spy_ccall

    def watch_jit(b):
        inner = b.compiled
        def call(*args):
            SEEN.append(jax.tree.leaves(args[0]))
            return inner(*args)
        b.compiled = call

    def three_calls(fn, weights, batches, mode, devices=None):
        par.clear_cache()  # a fresh callable: nothing placed by an earlier case
        b = par.batched(fn, mode=mode, devices=devices, replicated=True)
        if mode != "pmap":
            watch_jit(b)
        MOVES.clear(); SEEN.clear()
        moves = []
        for args in batches:
            jax.block_until_ready(b(*args, replicated=weights))
            moves.append(len(MOVES)); MOVES.clear()
        w = jax.tree.leaves(weights)
        return {"moves_per_call": moves, "calls_seen": len(SEEN),
                "program_got_weights_themselves": [all(x is y for x, y in zip(s, w)) for s in SEEN],
                "program_got_same_object_each_call": all(all(x is y for x, y in zip(s, SEEN[0])) for s in SEEN)}
""")


@pytest.mark.slow
def test_weights_placed_once():
    """No parameter bytes move on later calls, in "mesh" and "pmap" modes.

    On CPU devices `jax.transfer_guard_device_to_device("disallow")` does not flag the copies,
    so the check is direct: every `device_put` / `make_array_from_process_local_data` that
    creates a parameter-shaped buffer is counted, and the program's weights argument is
    compared by identity with the weights given.
    """
    r = _run(SPY + textwrap.dedent("""
        PARAM_SHAPES = {W.shape}
        devs = jax.devices()
        keys = [per_item_keys(SEEDS[i:i + 4]) for i in (0, 2, 4)]
        batches = [(k, X0[i:i + 4]) for k, i in zip(keys, (0, 2, 4))]
        res = {}
        # Weights as loading.load(..., devices=devs) places them: nothing ever moves.
        w_rep = jax.device_put(W, par.replicated(devs))
        sharding0 = w_rep.sharding
        for mode in ("mesh", "pmap"):
            res[mode + "_replicated"] = three_calls(toy, w_rep, batches, mode)
        res["sharding_kept"] = w_rep.sharding == sharding0
        # Weights on one device (load's default) or on the host: placed on the first call only.
        w_one = jax.device_put(W, devs[0])
        res["mesh_one_device"] = three_calls(toy, w_one, batches, "mesh")
        res["pmap_host"] = three_calls(toy, W, batches, "pmap")
        # A weights tree with leaves the program never reads (XLA prunes them from its inputs).
        tree = {"w": w_rep, "unused": jax.device_put(np.zeros(3, np.float32), par.replicated(devs))}
        part = lambda p, keys, x0: toy(p["w"], keys, x0)
        for mode in ("mesh", "pmap"):
            res[mode + "_unused_leaf"] = three_calls(part, tree, batches, mode)
        print("RESULT", json.dumps(res))
    """))
    print(json.dumps(r))
    for case in ("mesh_replicated", "pmap_replicated", "mesh_unused_leaf", "pmap_unused_leaf"):
        got = r[case]
        assert got["moves_per_call"] == [0, 0, 0], (case, got)
        assert got["calls_seen"] == 3 and got["program_got_weights_themselves"] == [True] * 3, (case, got)
    assert r["sharding_kept"]
    for case in ("mesh_one_device", "pmap_host"):
        got = r[case]
        assert got["moves_per_call"][0] >= 1 and got["moves_per_call"][1:] == [0, 0], (case, got)
        assert got["calls_seen"] == 3 and got["program_got_same_object_each_call"], (case, got)


@pytest.mark.slow
def test_load_places_weights_on_the_devices_once(tiny_converted_dir):
    """`loading.load(..., devices=all 4)` restores every parameter replicated over the data axis,
    in the layout "mesh" and "pmap" calls take as is: no parameter bytes move on any call."""
    r = _run(SPY + textwrap.dedent("""
        import sys
        from ti2v_jax import loading
        devs = jax.devices()
        PARAM_SHAPES = set()  # the spies count nothing while loading
        c = loading.load(sys.argv[1], components=("text_encoder",), tokenizer=False, devices=devs)
        params = c.text_encoder_params
        leaves = jax.tree.leaves(params)
        PARAM_SHAPES = {tuple(x.shape) for x in leaves if x.size >= 64}
        want = par.replicated(devs)
        res = {"replicated": all(x.sharding.is_equivalent_to(want, x.ndim) for x in leaves),
               "devices": sorted(len(x.sharding.device_set) for x in leaves)[:1]}
        encode = jax.vmap(lambda p, ids: c.text_encode(p, ids[None])[0], in_axes=(None, 0))
        ids = np.ones((4, 77), np.int32)
        batches = [(ids * k,) for k in (1, 2, 3)]
        for mode in ("mesh", "pmap"):
            res[mode] = three_calls(encode, params, batches, mode, devices=devs)
        print("RESULT", json.dumps(res))
    """), args=(str(tiny_converted_dir),))
    print(json.dumps(r))
    assert r["replicated"] and r["devices"] == [4]
    for mode in ("mesh", "pmap"):
        assert r[mode]["moves_per_call"] == [0, 0, 0], (mode, r[mode])
        assert r[mode]["program_got_weights_themselves"] == [True] * 3, (mode, r[mode])
