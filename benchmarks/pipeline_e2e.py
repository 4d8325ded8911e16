"""End to end: what `ti2v-jax generate` runs (`TI2VZeroPipeline`), against the reference loop.

    python benchmarks/pipeline_e2e.py --config small                       # CPU, fp32 both
    python benchmarks/pipeline_e2e.py --config full --dtype bfloat16       # GPU: bf16 JAX, fp16-autocast torch

ti2v-jax: `TI2VZeroPipeline.from_pretrained(weights)` then `pipe(image, prompt, ...)` returning
uint8 frames on the host: tokenizing, text encoding, the whole video as one program, the
transfer and conversion; the first call (compilation included) and a second one (the program
reused) are reported apart, and loading apart from both. Reference: `reference_torch.TorchTI2VZero`
(the project's re-statement of the published loop on diffusers modules, benchmarks/bench.py's
"published loop"), the same weights, the text encoded by diffusers' CLIPTextModel, the video
decoded and converted to uint8 the same way. Each side runs in its own process. Both read one
diffusers `save_pretrained` directory of random, perturbed weights (`bench.make_weights`).
Prints one JSON line per side and writes pipeline_e2e.json to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PROMPT = "a cat running in the park"


def _image(size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.random((size, size, 3)) * 255).astype(np.uint8)


def run_jax(a) -> dict:
    import jax
    import numpy as np

    from ti2v_jax.pipeline import TI2VZeroPipeline

    t0 = time.perf_counter()
    pipe = TI2VZeroPipeline.from_pretrained(a.weights, dtype=a.dtype, verify=False)
    out = {"impl": "ti2v-jax TI2VZeroPipeline", "device": str(jax.devices()[0].device_kind),
           "load_s": time.perf_counter() - t0}
    kw = dict(num_new_frames=a.frames, steps=a.steps, resample=a.resample, guidance=a.guidance, seed=0)
    image = _image(pipe.default_size[0])
    for name in ("first_call_s", "second_call_s"):
        t0 = time.perf_counter()
        video = pipe(image, PROMPT, **kw).frames  # uint8 on the host: waits for the device
        out[name] = time.perf_counter() - t0
    out["frames"] = int(video.shape[0])
    out["finite"] = bool(np.isfinite(video).all())
    return out


def run_torch(a) -> dict:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel

    import reference_torch
    from ti2v_jax.tokenizer import load_tokenizer, tokenize

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    t0 = time.perf_counter()
    unet = UNet3DConditionModel.from_pretrained(Path(a.weights) / "unet").to(device).eval()
    vae = AutoencoderKL.from_pretrained(Path(a.weights) / "vae").to(device).eval()
    te = CLIPTextModel.from_pretrained(Path(a.weights) / "text_encoder").to(device).eval()
    tok = load_tokenizer(Path(a.weights) / "tokenizer")
    autocast = torch.float16 if gpu and a.dtype != "float32" else None
    index = json.loads((Path(a.weights) / "model_index.json").read_text())
    ref = reference_torch.TorchTI2VZero(unet, vae, device=device, autocast_dtype=autocast,
                                        num_frames=int(index.get("num_frames", 16)))  # as the pipeline reads it
    out = {"impl": "reference_torch.TorchTI2VZero (published loop)", "device": torch.cuda.get_device_name()
           if gpu else "cpu", "load_s": time.perf_counter() - t0}
    size = vae.config.sample_size
    for name in ("first_call_s", "second_call_s"):
        t0 = time.perf_counter()
        with torch.no_grad():
            ids = torch.tensor(np.asarray(tokenize(tok, [PROMPT, ""])), device=device)
            ctx = te(ids).last_hidden_state
            text, empty = ctx[:1], ctx[1:]
            img = torch.tensor(_image(size), device=device).permute(2, 0, 1).float() / 127.5 - 1
            new = ref.video(img, text, empty, num_new_frames=a.frames, steps=a.steps, resample=a.resample,
                            g=a.guidance)
            video = torch.cat([img[None], new.float()]).clamp(-1, 1)
            video = ((video + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out[name] = time.perf_counter() - t0
    out["frames"] = int(video.shape[0])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small", help="benchmarks/configs.py name (default small)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--frames", type=int, default=15, help="new frames N (default 15: a 16-frame video)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--resample", type=int, default=4)
    p.add_argument("--guidance", type=float, default=9.0)
    p.add_argument("--weights", default=None, help="weights dir: used if it holds a pipeline, else made there")
    p.add_argument("--impl", choices=("both", "jax", "torch"), default="both")
    p.add_argument("--out", default=str(HERE / "out"))
    a = p.parse_args()
    if a.impl != "both":
        print(json.dumps((run_jax if a.impl == "jax" else run_torch)(a)), flush=True)
        return
    tmp = None
    if a.weights is None:
        tmp = tempfile.TemporaryDirectory()
        a.weights = tmp.name
    if not (Path(a.weights) / "model_index.json").is_file():
        import bench

        bench.make_weights(a.config, Path(a.weights))
    results = {"config": a.config, "dtype": a.dtype, "N": a.frames, "S": a.steps, "R": a.resample, "g": a.guidance}
    for impl in ("jax", "torch"):
        cmd = [sys.executable, __file__, "--impl", impl, "--weights", a.weights, "--dtype", a.dtype,
               "--frames", str(a.frames), "--steps", str(a.steps), "--resample", str(a.resample),
               "--guidance", str(a.guidance)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{impl} failed:\n{r.stderr[-3000:]}")
        results[impl] = json.loads(r.stdout.strip().splitlines()[-1])
        print(impl, results[impl], flush=True)
    j, t = results["jax"], results["torch"]
    results["speedup_second_call"] = t["second_call_s"] / j["second_call_s"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline_e2e.json").write_text(json.dumps(results, indent=1))
    print(f"{a.config} {a.dtype} N={a.frames} S={a.steps} R={a.resample}: TI2VZeroPipeline "
          f"{j['second_call_s']:.2f} s (first call {j['first_call_s']:.1f} s), reference loop "
          f"{t['second_call_s']:.2f} s: {results['speedup_second_call']:.2f}x")


if __name__ == "__main__":
    main()
