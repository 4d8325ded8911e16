"""One table from run_gpu.sh's parts: ti2v-jax's frame program (throughput.py, B=1 and the
B rows) against the published PyTorch loop and the tuned PyTorch peer (bench.py), same run.

    python benchmarks/gpu/summary.py RAW_DIR > summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(raw: str):
    raw = Path(raw)
    pub = _load(next(iter(sorted(raw.glob("bench_published.json"))), raw / "-")).get("torch", {})
    tuned = _load(next(iter(sorted(raw.glob("bench_tuned.json"))), raw / "-")).get("torch_tuned", {})
    thr = _load(next(iter(sorted(raw.glob("throughput_*.json"))), raw / "-"))
    rows = {r["batch"]: r for r in thr.get("rows", []) if "call_s" in r}
    one = rows.get(1, {})
    pairs = thr.get("pairs_per_frame")
    out = [f"# GPU run: {thr.get('device', '-')}, config {thr.get('config', '-')}", "",
           f"ti2v-jax: {thr.get('dtype', '-')} U-Net, {thr.get('vae_dtype', '-')} VAE, attention "
           f"{thr.get('attention', '-')}, options {thr.get('options', '-')}, S={thr.get('steps')}, "
           f"R={thr.get('resample')}, {thr.get('slide')} slide, random weights built in JAX",
           f"published loop: {pub.get('dtype', '-')}, {pub.get('device', '-')}, torch {pub.get('torch', '-')}",
           f"tuned peer: {tuned.get('dtype', '-')}, {tuned.get('compile', '-')}, {tuned.get('attention', '-')}, "
           f"guidance {tuned.get('guidance', '-')}", ""]

    def s(v, unit="s", digits=3):
        return "-" if v is None else f"{v:.{digits}f} {unit}"

    def x(a, b):
        return "-" if not a or not b else f"{b / a:.2f}x"

    jax_pair = one.get("call_s") / pairs if one.get("call_s") and pairs else None
    jax_frame = one.get("call_s")
    out += ["| what | ti2v-jax | published loop | tuned peer | vs published | vs tuned |", "|---|---|---|---|---|---|",
            f"| guidance pair (jax: inside the B=1 frame program) | {s(jax_pair)} | {s(pub.get('pair_s'))} | "
            f"{s(tuned.get('pair_s'))} | {x(jax_pair, pub.get('pair_s'))} | {x(jax_pair, tuned.get('pair_s'))} |",
            f"| one new frame, pixel slide, B=1 | {s(jax_frame)} | {s(pub.get('frame_pixel_s'))} | "
            f"{s(tuned.get('frame_pixel_s'))} | {x(jax_frame, pub.get('frame_pixel_s'))} | "
            f"{x(jax_frame, tuned.get('frame_pixel_s'))} |",
            f"| one new frame, latent slide, B=1 | - | {s(pub.get('frame_latent_s'))} | "
            f"{s(tuned.get('frame_latent_s'))} | - | - |",
            f"| tuned peer eager (no compile): pair / latent frame | - | - | {s(tuned.get('pair_eager_s'))} / "
            f"{s(tuned.get('frame_latent_eager_s'))} | - | - |",
            f"| compile (not in the rows above) | {s(one.get('compile_s'), digits=1)} | - | "
            f"{s(tuned.get('compile_and_first_pair_s'), digits=1)} (+ first pair) | - | - |",
            f"| peak device memory | {s(one.get('peak_device_gib'), 'GiB', 2)} (B=1) | "
            f"{s(pub.get('peak_device_gib'), 'GiB', 2)} | {s(tuned.get('peak_device_gib'), 'GiB', 2)} | - | - |", ""]
    out += ["| B videos per call | s per new frame of each video | new frames/s per chip | amortised s per frame | "
            "MFU | peak device memory |", "|---|---|---|---|---|---|"]
    for r in thr.get("rows", []):
        if "call_s" in r:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
            out.append(f"| {r['batch']} | {r['call_s']:.3f} s | {r['frames_per_s_per_chip']:.3f} | "
                       f"{r['amortised_s_per_frame']:.3f} s | {mfu} | {s(r.get('peak_device_gib'), 'GiB', 2)} |")
        else:
            out.append(f"| {r['batch']} | {r.get('skipped') or r.get('error')} | | | | |")
    for name, d in (("published", pub), ("tuned", tuned)):
        if d.get("error"):
            out.append(f"\n{name} ERROR: {d['error']}")
    for n, v in thr.get("ab", {}).items():
        out.append(f"\nA/B at B=1: {n} {v['median_s']:.3f} s per new frame, rounds {v['rounds_s']}")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out")
