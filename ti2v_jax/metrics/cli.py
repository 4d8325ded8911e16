"""The `evaluate` and `manifest` subcommands (registered by `ti2v_jax.cli`)."""

from __future__ import annotations

import json


def add_evaluate(sub, number) -> None:
    e = sub.add_parser("evaluate", help="FVD (tFVD/sFVD per group) and PSNR/SSIM of generated clips against "
                                         "real ones",
                       description="Compare generated clips (a `ti2v-jax batch` output folder or a folder of "
                                   "clips) with real ones (a folder of .mp4/.gif/frame folders, or the clip "
                                   "manifest `ti2v-jax manifest` writes). FVD needs the user's I3D weights "
                                   "(--i3d: the pytorch_i3d state dict, e.g. i3d_pretrained_400.pt), which "
                                   "ti2v-jax does not download.")
    e.add_argument("--real", required=True, metavar="DIR|MANIFEST", help="the real clips")
    e.add_argument("--fake", required=True, metavar="DIR", help="the generated clips")
    e.add_argument("--i3d", default=None, metavar="FILE", help="I3D weights (pytorch_i3d state dict) for FVD")
    e.add_argument("--group-by", default=None, metavar="prompt|image|KEY",
                   help="also the FVD within each group of this field, averaged (prompt: tFVD; image or "
                        "subject: sFVD); each group needs >= 2 clips on each side")
    e.add_argument("--frames", type=number("--frames", int, 1), default=16,
                   help="frames per clip, the first ones (default 16; FVD needs >= 9)")
    e.add_argument("--frame-metrics", action="store_true",
                   help="PSNR and SSIM per frame index between the clips of the same id")
    e.add_argument("--no-fvd", action="store_true", help="skip FVD (frame metrics only; no I3D needed)")
    e.add_argument("--unequal", action="store_true",
                   help="allow different numbers of real and generated clips (refused by default)")
    e.add_argument("--batch-size", type=number("--batch-size", int, 1), default=4,
                   help="clips per I3D call, split over the devices (default 4)")
    e.add_argument("--parallel", choices=("none", "mesh", "pmap"), default="mesh",
                   help="how I3D batches are split over devices (default mesh)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_manifest(sub, number) -> None:
    from ti2v_jax.metrics import datasets

    m = sub.add_parser("manifest", help="the paper's UCF101 / MUG protocol as a batch manifest and a real-clip "
                                        "manifest",
                       description="Write OUT (a `ti2v-jax batch` manifest: first frame, class or expression "
                                   "prompt, seed and settings per item, as TI2V-Zero's gen_video_ucf.py / "
                                   "gen_video_mug.py draw them) and OUT.real.jsonl (the real clips, for "
                                   "`ti2v-jax evaluate --real`).")
    m.add_argument("dataset", choices=tuple(datasets.BUILDERS), help="which dataset's protocol")
    m.add_argument("dir", help="UCF101: the frame folders (<Class>/v_<Class>_gXX_cYY/); MUG: the dataset "
                               "folder (<subject>/<expression>/<take>/)")
    m.add_argument("--out", required=True, metavar="OUT.jsonl", help="the batch manifest to write")
    m.add_argument("--count", type=number("--count", int, 1), default=datasets.COUNT,
                   help=f"number of videos (default {datasets.COUNT}, as the paper)")
    m.add_argument("--seed", type=number("--seed", int, 0), default=datasets.SEED,
                   help=f"the draws' seed and the items' base seed (default {datasets.SEED}, as the scripts)")
    m.add_argument("--overwrite", action="store_true", help="replace existing manifests")


def run_evaluate(a) -> int:
    from ti2v_jax.metrics.evaluate import evaluate, summary

    result = evaluate(a.real, a.fake, i3d=a.i3d, group_by=a.group_by, num_frames=a.frames,
                      batch_size=a.batch_size, frame_metrics=a.frame_metrics, fvd=not a.no_fvd,
                      unequal=a.unequal, mode=a.parallel, progress=not a.no_progress)
    print(json.dumps(result, indent=1) if a.json else summary(result))
    return 0


def run_manifest(a) -> int:
    from ti2v_jax.metrics.datasets import write_manifests

    out, real = write_manifests(a.dataset, a.dir, a.out, count=a.count, seed=a.seed, overwrite=a.overwrite)
    print(f"wrote {out} ({a.count} items for `ti2v-jax batch`) and {real} (the real clips for "
          f"`ti2v-jax evaluate --real`)")
    return 0
