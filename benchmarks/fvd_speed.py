"""FVD feature speed: clips of 16x224x224 per second, ti2v-jax's I3D against the PyTorch I3D.

Both sides run the whole feature step of FVD on the same uint8 clips: preprocessing
(cd-fvd's `preprocess_i3d` / `i3d.preprocess`) and the network's 400 logits, with the same
random weights (the PyTorch I3D that `cd-fvd` ships, loaded by path, converted by
`i3d.convert_state_dict`). Rounds alternate between the two so both see the same machine
load; the median per side is reported, with JAX's compile time apart and the largest
feature difference as a check. The JAX side is what `ti2v-jax evaluate` runs
(`metrics.evaluate.FeatureExtractor`: `parallel.run_batched` with the platform's
compiler options).

    python3 benchmarks/fvd_speed.py --batch 4 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _reference():
    spec = importlib.util.find_spec("cdfvd")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("cd-fvd is needed for the PyTorch I3D: pip install --no-deps cd-fvd==0.1.1")
    path = Path(list(spec.submodule_search_locations)[0]) / "third_party" / "i3d" / "pytorch_i3d.py"
    s = importlib.util.spec_from_file_location("_cdfvd_pytorch_i3d", path)
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4, help="clips per call (default 4)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="input frame size (resized to 224 inside)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", choices=("none", "mesh"), default="none",
                    help="run_batched mode (mesh: split the batch over the devices)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import jax
    import torch
    from cdfvd.third_party.i3d.utils import preprocess_i3d

    from bench import machine
    from ti2v_jax.metrics import i3d
    from ti2v_jax.metrics.evaluate import FeatureExtractor

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = _reference().InceptionI3d(400, in_channels=3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = i3d.convert_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
    clips = np.random.default_rng(0).integers(0, 256, (a.batch, a.frames, a.size, a.size, 3), dtype=np.uint8)

    # What `ti2v-jax evaluate` runs: run_batched with the platform's compiler options.
    features = FeatureExtractor(model, mode=a.parallel)
    t0 = time.perf_counter()
    ours = features(clips)
    first_call = time.perf_counter() - t0

    def run_jax():
        t = time.perf_counter()
        out = features(clips)  # host numpy: waits for the device
        return time.perf_counter() - t, out

    def run_torch():
        t = time.perf_counter()
        with torch.no_grad():
            out = net(preprocess_i3d(clips))
        return time.perf_counter() - t, out.numpy()

    run_torch()  # warm-up (oneDNN primitive caches)
    times = {"jax": [], "torch": []}
    for _ in range(a.rounds):
        dt, ours = run_jax()
        times["jax"].append(dt)
        dt, ref = run_torch()
        times["torch"].append(dt)
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    res = {"machine": machine(), "jax_backend": jax.default_backend(), "jax_devices": jax.device_count(), "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "clip": f"{a.frames}x{a.size}x{a.size}", "batch": a.batch,
           "rounds": a.rounds, "jax_first_call_s": round(first_call, 2),
           "jax_clips_per_s": round(a.batch / statistics.median(times["jax"]), 3),
           "torch_clips_per_s": round(a.batch / statistics.median(times["torch"]), 3),
           "jax_round_s": [round(t, 3) for t in times["jax"]],
           "torch_round_s": [round(t, 3) for t in times["torch"]],
           "max_rel_feature_difference": err}
    res["jax_over_torch"] = round(res["jax_clips_per_s"] / res["torch_clips_per_s"], 3)
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
