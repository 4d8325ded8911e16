"""Compare two sampler settings on the default model: motion metrics, PSNR/SSIM and (with I3D weights) FVD.

    python examples/evaluate_sampler.py                                   # resample=4 vs resample=0
    python examples/evaluate_sampler.py --a steps=10,resample=4 --b steps=10,inversion=off --cases 16
    python examples/evaluate_sampler.py --i3d i3d_pretrained_400.pt       # adds FVD

Both settings animate the same held-out synthetic start images (`evaluation.eval_cases`)
with the same seeds for 15 new frames (16 frames, as the paper's protocol). The synthetic
world knows each clip's true motion, so each setting is measured three ways against it:
the object's motion read back from the frames (`evaluation.video_metrics`: found, colour
kept, moved in the prompted direction, jumps), PSNR and SSIM per frame against the true
clip (`metrics.frames`), and, when an I3D weights file is given (the user's: ti2v-jax
does not download it), the FVD between the setting's videos and the true clips
(`metrics.fvd`; with few clips it is a rough, biased estimate: compare settings with it,
not with published numbers).
"""

import argparse

import numpy as np

from ti2v_jax.manifest import parse_setting
from ti2v_jax.metrics import frames as frame_metrics
from ti2v_jax.metrics import fvd as fvd_lib
from ti2v_jax.pipeline import DEFAULT_MODEL, TI2VZeroPipeline
from ti2v_jax.toy import evaluation, synthetic

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--a", default="resample=4", help="setting A, KEY=VALUE[,KEY=VALUE] (default resample=4)")
p.add_argument("--b", default="resample=0", help="setting B (default resample=0)")
p.add_argument("--cases", type=int, default=8, help="start images (default 8)")
p.add_argument("--frames", type=int, default=16, help="frames per video, the start image included (default 16)")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--i3d", default=None, help="I3D weights (pytorch_i3d state dict) for FVD")
a = p.parse_args()


def settings_of(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = parse_setting(key.strip(), value.strip())
    return out


pipe = TI2VZeroPipeline.from_pretrained(DEFAULT_MODEL)
images, prompts, specs = evaluation.eval_cases(a.cases, a.seed, num_frames=a.frames)
truth = np.stack([synthetic.render(s, a.frames) for s in specs])
extract = None
if a.i3d:
    from ti2v_jax.metrics import i3d
    from ti2v_jax.metrics.evaluate import FeatureExtractor

    extract = FeatureExtractor(i3d.load_i3d(a.i3d))
    truth_features = extract(truth)

results = {}
for name, text in (("A", a.a), ("B", a.b)):
    kw = settings_of(text)
    print(f"setting {name}: {kw} ...", flush=True)
    videos = pipe(list(images), prompts, num_new_frames=a.frames - 1, seed=a.seed, progress=True, **kw).frames
    rows = [evaluation.video_metrics(v, s.color, s.shape, s.direction) for v, s in zip(videos, specs)]
    r = evaluation.summarize(rows)
    r["psnr"] = float(np.mean(frame_metrics.psnr(truth[:, 1:], videos[:, 1:])))
    r["ssim"] = float(np.mean(frame_metrics.ssim(truth[:, 1:], videos[:, 1:])))
    if extract is not None:
        r["fvd"] = fvd_lib.fvd(truth_features, extract(videos))
    results[f"{name}: {text}"] = r

keys = ["found", "color_first", "direction_ok", "along_px", "jumps", "psnr", "ssim"] + (["fvd"] if a.i3d else [])
print(f"\n{a.cases} start images, {a.frames} frames each; PSNR/SSIM over the new frames against the true clips")
print(f"{'setting':28s}" + "".join(f"{k:>13s}" for k in keys))
for name, r in results.items():
    print(f"{name:28s}" + "".join(f"{r[k]:13.3f}" for k in keys))
if not a.i3d:
    print("(no FVD: pass --i3d FILE with your I3D weights, e.g. i3d_pretrained_400.pt)")
