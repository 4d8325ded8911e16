"""The `ti2v-jax` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time

DTYPES = ("float32", "bfloat16", "float16")


def _number(name, kind, low):
    """argparse type: a number of `kind` (int or float) >= low, with an error naming the option."""
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {s!r}")
        if v < low:
            raise argparse.ArgumentTypeError(f"{name} must be >= {low}, got {v}")
        return v
    return parse


def _positive_int(name):
    return _number(name, int, 1)


def _nonneg_int(name):
    return _number(name, int, 0)


def _nonneg_float(name):
    return _number(name, float, 0)


def _add_model(p, required=False):
    p.add_argument("--model", required=required, default=None,
                   help="converted ti2v-jax directory, diffusers-layout directory (converted on the fly), "
                        "original ModelScope directory, or hub repo id (online only). "
                        "Default: the small model shipped with the package, if present.")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="parameter and activation dtype (default float32; bfloat16 on GPU/TPU is much faster)")
    p.add_argument("--num-frames", type=_positive_int("--num-frames"), default=None,
                   help="frames K the video model denoises at once (default: the checkpoint's "
                        "model_index.json 'num_frames', else 16 as ModelScope)")


def _add_sampler(p, video_default_frames=15):
    p.add_argument("--prompt", required=True, help="text prompt (may be empty)")
    p.add_argument("--out", required=True,
                   help="output: .gif, .mp4, or a directory for PNG frames (no extension or trailing /)")
    p.add_argument("--steps", type=_positive_int("--steps"), default=10, help="DDIM steps S (default 10)")
    p.add_argument("--guidance", type=_nonneg_float("--guidance"), default=9.0,
                   help="classifier-free guidance scale g (default 9.0; 1 disables the empty-text pass)")
    p.add_argument("--eta", type=_nonneg_float("--eta"), default=0.0, help="DDIM eta (default 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same video")
    p.add_argument("--height", type=_positive_int("--height"), default=None,
                   help="video height in pixels (default: the model's native size)")
    p.add_argument("--width", type=_positive_int("--width"), default=None,
                   help="video width in pixels (default: the model's native size)")
    p.add_argument("--fps", type=_positive_int("--fps"), default=8, help="frames per second of the output (default 8)")
    p.add_argument("--parallel", choices=("none", "mesh", "pmap"), default="none",
                   help="batch over devices: none, mesh (jit over a device mesh), pmap")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ti2v-jax",
        description="TI2V-Zero in JAX: animate an image with a frozen text-to-video diffusion model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="image + text -> video (TI2V-Zero)",
                       description="Animate IMAGE following PROMPT with TI2V-Zero (repeat-and-slide, "
                                   "DDPM inversion, resampling).")
    _add_model(g)
    g.add_argument("--image", required=True, action="append",
                   help="start image (path); repeat --image for video prediction from several frames")
    _add_sampler(g)
    g.add_argument("--num-new-frames", type=_positive_int("--num-new-frames"), default=None,
                   help="frames N to generate after the given image (default 15: a 16-frame video; "
                        "or the checkpoint's recommendation, 7 for the shipped model)")
    g.add_argument("--resample", type=_nonneg_int("--resample"), default=4,
                   help="resampling iterations R per step (default 4)")
    g.add_argument("--no-inversion", action="store_true",
                   help="start each frame from pure noise instead of DDPM inversion of the last queue frame")
    g.add_argument("--slide", choices=("pixel", "latent"), default="pixel",
                   help="pixel: decode each new frame and re-encode the queue (as published); "
                        "latent: slide latents (cheaper, different algorithm)")
    g.add_argument("--baseline", action="store_true",
                   help="the paper's replacing-based baseline instead of repeat-and-slide")

    t = sub.add_parser("t2v", help="text -> video (plain DDIM sampling of the video model)")
    _add_model(t)
    _add_sampler(t)

    c = sub.add_parser("convert", help="convert a PyTorch checkpoint directory to a ti2v-jax directory")
    c.add_argument("src", help="diffusers-layout directory (model_index.json, unet/, vae/, ...) "
                              "or original ModelScope directory (configuration.json)")
    c.add_argument("dst", help="output directory (must not exist unless --overwrite)")
    c.add_argument("--dtype", choices=DTYPES, default="float32", help="stored parameter dtype")
    c.add_argument("--from", dest="source_format", choices=("auto", "diffusers", "modelscope"), default="auto",
                   help="source layout (default: auto-detect)")
    c.add_argument("--variant", default=None, help="diffusers layout: read weight files of this variant first, "
                                                     "e.g. fp16")
    c.add_argument("--overwrite", action="store_true", help="replace an existing DST")

    i = sub.add_parser("info", help="show the configs, parameter counts and dtypes of a checkpoint directory")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true", help="print JSON")

    m = sub.add_parser("make-tiny", help="write a tiny random-weight checkpoint in diffusers layout "
                                         "(for trying the tool and for tests: its videos are noise)")
    m.add_argument("dir")
    m.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("batch", help="a manifest of (image, prompt) pairs -> one video each (resumable, "
                                     "sharded over devices and hosts)",
                       description="Run TI2V-Zero on every line of a JSONL manifest "
                                   '({"id": ..., "image": ..., "prompt": ..., optional settings}); writes '
                                   "OUT_DIR/<id>.<format> and OUT_DIR/<id>.json. Rerunning skips finished ids.")
    _add_batch(b)
    s = sub.add_parser("sweep", help="a batch job over a grid of sampler settings, one folder per point",
                       description="Run `batch` once per point of a grid of settings, into "
                                   "OUT_DIR/<key>=<value>_.../; grid values override the manifest's.")
    _add_batch(s)
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a setting and its values, e.g. resample=0,2,4 or inversion=on,off (repeatable)")
    s.add_argument("--grid-json", default=None, metavar="JSON",
                   help='the grid as JSON text or a .json file: {"resample": [0, 2], "guidance": [7.5, 9]}')
    return parser


def _add_batch(p):
    _add_model(p)
    p.add_argument("--manifest", required=True, help="JSONL file, one {id, image, prompt, ...} object a line")
    p.add_argument("--out-dir", required=True, help="output directory (created; reruns resume in it)")
    p.add_argument("--num-new-frames", type=_positive_int("--num-new-frames"), default=15,
                   help="default frames N per video after the given image (default 15)")
    p.add_argument("--steps", type=_positive_int("--steps"), default=10, help="default DDIM steps (default 10)")
    p.add_argument("--resample", type=_nonneg_int("--resample"), default=4,
                   help="default resampling iterations R (default 4)")
    p.add_argument("--guidance", type=_nonneg_float("--guidance"), default=9.0, help="default guidance (9.0)")
    p.add_argument("--eta", type=_nonneg_float("--eta"), default=0.0, help="default DDIM eta (default 0)")
    p.add_argument("--no-inversion", action="store_true", help="default: no DDPM inversion")
    p.add_argument("--slide", choices=("pixel", "latent"), default="pixel", help="default slide (pixel)")
    p.add_argument("--baseline", action="store_true", help="default: the replacing-based baseline")
    p.add_argument("--height", type=_positive_int("--height"), default=None, help="default: the model's size")
    p.add_argument("--width", type=_positive_int("--width"), default=None, help="default: the model's size")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed: an item without its own seed gets a stable hash of (base seed, id)")
    p.add_argument("--fps", type=_positive_int("--fps"), default=8, help="frames per second (default 8)")
    p.add_argument("--format", choices=("gif", "mp4", "png"), default="gif",
                   help="gif, mp4, or png (a directory of frames per item)")
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None,
                   help="items per call on each process (default: the local device count; 1 with --parallel none)")
    p.add_argument("--parallel", choices=("none", "mesh", "pmap"), default="mesh",
                   help="how a batch is split over devices (default mesh: all devices)")
    p.add_argument("--max-items", type=_nonneg_int("--max-items"), default=None,
                   help="stop after this many pending items (run a job in chunks)")
    p.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None,
                   help="call jax.distributed.initialize() (default: when the environment names a "
                        "multi-host launch: TPU pod, Slurm, Open MPI, JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--process-index", type=_nonneg_int("--process-index"), default=None,
                   help="this process's share (default: TI2V_PROCESS_INDEX, else jax.process_index())")
    p.add_argument("--process-count", type=_positive_int("--process-count"), default=None,
                   help="number of shares (default: TI2V_PROCESS_COUNT, else jax.process_count())")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_convert(a):
    from ti2v_jax.weights.convert import convert_checkpoint
    report = convert_checkpoint(a.src, a.dst, dtype=a.dtype, source_format=a.source_format, overwrite=a.overwrite,
                                variant=a.variant)
    print(report.summary())


def _cmd_info(a):
    from ti2v_jax.loading import describe
    info = describe(a.dir)
    if a.json:
        print(json.dumps(info, indent=2))
        return
    for name, comp in info["components"].items():
        print(f"{name}: {comp['class']}  params={comp['num_params']:,}  dtype={comp['dtype']}")
        for k, v in comp["config"].items():
            if not k.startswith("_"):
                print(f"    {k}: {v}")
    for k, v in info.items():
        if k != "components":
            print(f"{k}: {v}")


def _cmd_make_tiny(a):
    from ti2v_jax.tiny import make_tiny
    make_tiny(a.dir, seed=a.seed)
    print(f"wrote a tiny RANDOM-weight checkpoint (diffusers layout) to {a.dir}; its videos are noise")


def _sampler_kwargs(a):
    return dict(num_inference_steps=a.steps, guidance_scale=a.guidance, eta=a.eta, seed=a.seed,
                height=a.height, width=a.width, parallel=a.parallel)


def _cmd_generate(a):
    from ti2v_jax.io import check_output_path, save_video
    from ti2v_jax.pipeline import TI2VZeroPipeline
    check_output_path(a.out)
    pipe = TI2VZeroPipeline.from_pretrained(a.model, dtype=a.dtype, num_frames=a.num_frames)
    t0 = time.perf_counter()
    images = a.image if len(a.image) > 1 else a.image[0]
    video = pipe(images, a.prompt, num_new_frames=a.num_new_frames, resample_iters=a.resample,
                 ddpm_inversion=not a.no_inversion, slide=a.slide, baseline=a.baseline,
                 given_frames_as_video=len(a.image) > 1, progress=True, **_sampler_kwargs(a))
    save_video(video, a.out, fps=a.fps)
    print(f"wrote {a.out}: {video.shape[0]} frames of {video.shape[1]}x{video.shape[2]} "
          f"in {time.perf_counter() - t0:.1f} s")


def _cmd_t2v(a):
    from ti2v_jax.io import check_output_path, save_video
    from ti2v_jax.pipeline import TI2VZeroPipeline
    check_output_path(a.out)
    pipe = TI2VZeroPipeline.from_pretrained(a.model, dtype=a.dtype, num_frames=a.num_frames)
    video = pipe.text_to_video(a.prompt, **_sampler_kwargs(a))
    save_video(video, a.out, fps=a.fps)
    print(f"wrote {a.out}: {video.shape[0]} frames of {video.shape[1]}x{video.shape[2]}")


def _cmd_batch(a):
    from ti2v_jax import batch
    from ti2v_jax.pipeline import TI2VZeroPipeline
    batch.initialize_distributed(a.distributed)
    grid = batch.parse_grid(a.grid, a.grid_json) if a.command == "sweep" else None
    pipe = TI2VZeroPipeline.from_pretrained(a.model, dtype=a.dtype, num_frames=a.num_frames)
    defaults = dict(num_new_frames=a.num_new_frames, steps=a.steps, resample=a.resample, guidance=a.guidance,
                    eta=a.eta, inversion=not a.no_inversion, slide=a.slide, baseline=a.baseline,
                    height=a.height, width=a.width)
    kw = dict(defaults={k: v for k, v in defaults.items() if v is not None}, base_seed=a.seed,
              batch_size=a.batch_size, parallel=a.parallel, fmt=a.format, fps=a.fps,
              process_index=a.process_index, process_count=a.process_count, max_items=a.max_items,
              progress=not a.no_progress, model_name=str(a.model or "default"))
    if grid is None:
        results = [batch.run_batch(pipe, a.manifest, a.out_dir, **kw)]
    else:
        results = list(batch.run_sweep(pipe, a.manifest, a.out_dir, grid, **kw).values())
    for r in results:
        print(r.summary())
    return 1 if any(r.errors for r in results) else 0


COMMANDS = {"generate": _cmd_generate, "t2v": _cmd_t2v, "convert": _cmd_convert, "info": _cmd_info,
            "make-tiny": _cmd_make_tiny, "batch": _cmd_batch, "sweep": _cmd_batch}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = COMMANDS[args.command](args)  # None: success
    except (FileNotFoundError, FileExistsError, ValueError, NotADirectoryError) as e:
        print(f"ti2v-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
