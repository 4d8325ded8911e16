"""The `ti2v-jax` command line.

Every problem with what the command was given (files, images, prompts, settings,
checkpoints, disk, memory) ends as one line on stderr and exit status 2; a batch job
where some items failed exits with 1; Ctrl-C exits with 130. Nothing half-written is
left behind. `--debug` (or TI2V_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _watch_interrupts() -> None:
    """End the command on Ctrl-C at any moment with one line and status 130, never with a
    KeyboardInterrupt: raised into the main thread it can land inside an import (jaxlib's
    start-up then fails as an ImportError), a garbage-collector callback (printed as
    "Exception ignored") or a teardown racing XLA's threads (SIGABRT). Python's handler
    does nothing but wake, through `signal.set_wakeup_fd`, a thread that removes the
    temporaries being written (`cleanup`), says so and ends the process with `os._exit`.
    Outputs appear only by a rename once complete, so none is half-written."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)

    def watch():
        while signal.SIGINT not in os.read(r, 64):
            pass
        try:  # ti2v_jax.cleanup not imported yet: nothing is being written
            getattr(sys.modules.get("ti2v_jax.cleanup"), "remove_all", lambda: None)()
        except Exception:  # noqa: BLE001 - best effort; the exit below must happen
            pass
        commands = globals().get("COMMANDS", {})  # not yet defined while the imports below run
        prog = " ".join(["ti2v-jax"] + [c for c in sys.argv[1:] if c in commands][:1])
        os.write(2, f"\n{prog}: interrupted; nothing was written for the unfinished output\n".encode())
        os._exit(130)

    threading.Thread(target=watch, daemon=True, name="ti2v-jax-interrupt").start()


_COMMAND_LINE = __name__ == "__main__" or os.path.basename(sys.argv[0]) == "ti2v-jax"
if _COMMAND_LINE:  # the command itself (console script or -m): Ctrl-C is honoured from here on, imports included
    _watch_interrupts()

import argparse  # noqa: E402
import errno  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

from ti2v_jax import settings as st  # noqa: E402
from ti2v_jax.metrics import cli as metrics_cli  # noqa: E402

DTYPES = st.DTYPE_NAMES
# The settings plain text-to-video sampling uses.
T2V_SETTINGS = ("steps", "guidance", "eta", "height", "width")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): `ti2v-jax CMD: error: ...`, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(name, kind, low):
    """argparse type: a number of `kind` (int or float) >= low, with an error naming the option."""
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{name} must be >= {low}, got {v}")
        return v
    return parse


def _seed(s):
    try:
        return st.parse_seed(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_model(p):
    p.add_argument("--model", default=None, metavar="DIR",
                   help="checkpoint: 'default' (the small model shipped with the package; also when omitted), "
                        "a converted ti2v-jax directory, a diffusers-layout or original ModelScope directory "
                        "(converted in memory), or a hub repo id (online only)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="U-Net parameters and compute (default float32; bfloat16 on GPU/TPU is much faster, "
                        "on a CPU it is not)")
    p.add_argument("--vae-text-dtype", choices=DTYPES + ("same",), default="float32",
                   help="VAE and text encoder (default float32; 'same': as --dtype)")
    p.add_argument("--num-frames", type=_number("--num-frames", int, 2), default=None, metavar="K",
                   help="frames K the video model denoises at once (default: the checkpoint's "
                        "model_index.json 'num_frames', else 16 as ModelScope)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking the checkpoint's recorded file hashes")
    p.add_argument("--executables", default=None, metavar="DIR",
                   help="programs compiled ahead by `ti2v-jax plan --save-executables DIR`: used for the calls "
                        "they were compiled for (else compiled, saying why)")


def _add_output(p):
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output: .gif, .mp4, or a directory for PNG frames (no extension or trailing /)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0); same seed, same video")
    p.add_argument("--fps", type=_number("--fps", int, 1), default=8, help="frames per second of the output (default 8)")
    p.add_argument("--parallel", choices=("none", "mesh", "pmap"), default="none",
                   help="split a batch over devices: none, mesh (shard_map over all devices), pmap")


def _add_batch(p):
    _add_model(p)
    p.add_argument("--manifest", required=True, help="JSONL file, one {id, image, prompt, ...} object a line")
    p.add_argument("--out-dir", required=True, help="output directory (created; reruns resume in it)")
    g = p.add_argument_group("sampler settings (job defaults; a manifest line's own fields override them)")
    st.add_arguments(g)
    p.add_argument("--seed", type=_seed, default=0,
                   help="base seed: an item without its own seed gets a stable hash of (base seed, id)")
    p.add_argument("--fps", type=_number("--fps", int, 1), default=8, help="frames per second (default 8)")
    p.add_argument("--format", choices=("gif", "mp4", "png"), default="gif",
                   help="gif, mp4, or png (a directory of frames per item)")
    p.add_argument("--batch-size", type=_number("--batch-size", int, 1), default=None,
                   help="items per call on each process (default per device: the batch --executables were "
                        "compiled for (`ti2v-jax plan --batch-per-chip auto` finds the largest that fits); else 1 "
                        "on CPU, the fastest measured, and on GPU/TPU the largest of 1, 2, 4, 8 that fits in 90%% of "
                        "the device's memory by the memory plans compiled for the real model (benchmarks/RESULTS.md); "
                        "times the local device count with mesh/pmap)")
    p.add_argument("--parallel", choices=("none", "mesh", "pmap"), default="mesh",
                   help="how a batch is split over devices (default mesh: all devices)")
    p.add_argument("--max-items", type=_number("--max-items", int, 0), default=None,
                   help="stop after this many pending items (run a job in chunks)")
    p.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None,
                   help="call jax.distributed.initialize() (default: when the environment names a "
                        "multi-host launch: TPU pod, Slurm, Open MPI, JAX_COORDINATOR_ADDRESS)")
    p.add_argument("--process-index", type=_number("--process-index", int, 0), default=None,
                   help="this process's share (default: TI2V_PROCESS_INDEX, else jax.process_index())")
    p.add_argument("--process-count", type=_number("--process-count", int, 1), default=None,
                   help="number of shares (default: TI2V_PROCESS_COUNT, else jax.process_count())")
    p.add_argument("--claim-timeout", type=_number("--claim-timeout", float, 1), default=600, metavar="SECONDS",
                   help="workers sharing --out-dir claim items; a claim not refreshed for this long (its worker "
                        "died) is taken over (default 600)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ti2v-jax",
                     description="TI2V-Zero in JAX: animate an image with a frozen text-to-video diffusion model.")
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks instead of one-line errors (also TI2V_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("generate", help="image + text -> video (TI2V-Zero)",
                       description="Animate an image following a prompt with TI2V-Zero (repeat-and-slide, "
                                   "DDPM inversion, resampling).")
    _add_model(g)
    g.add_argument("--image", required=True, action="append", metavar="PATH",
                   help="start image; repeat --image for video prediction from several frames")
    g.add_argument("--prompt", required=True, help="text prompt (may be empty)")
    _add_output(g)
    st.add_arguments(g.add_argument_group("sampler settings"))

    t = sub.add_parser("t2v", help="text -> video (plain DDIM sampling of the video model)",
                       description="Sample a video from a prompt alone (plain DDIM with classifier-free guidance).")
    _add_model(t)
    t.add_argument("--prompt", required=True, help="text prompt (may be empty)")
    _add_output(t)
    st.add_arguments(t.add_argument_group("sampler settings"), T2V_SETTINGS)

    c = sub.add_parser("convert", help="convert a PyTorch checkpoint directory to a ti2v-jax directory",
                       description="Convert a diffusers-layout or original ModelScope checkpoint to a ti2v-jax "
                                   "directory (strict, atomic, with file hashes).")
    c.add_argument("src", help="diffusers-layout directory (model_index.json, unet/, vae/, ...) "
                              "or original ModelScope directory (configuration.json)")
    c.add_argument("dst", help="output directory (must not exist unless --overwrite)")
    c.add_argument("--dtype", choices=DTYPES, default="float32", help="stored parameter dtype (default float32)")
    c.add_argument("--from", dest="source_format", choices=("auto", "diffusers", "modelscope"), default="auto",
                   help="source layout (default: auto-detect)")
    c.add_argument("--variant", default=None, help="diffusers layout: read weight files of this variant first, "
                                                     "e.g. fp16")
    c.add_argument("--overwrite", action="store_true", help="replace an existing DST")

    i = sub.add_parser("info", help="show the configs, parameter counts and dtypes of a checkpoint",
                       description="Show a checkpoint's components, configs, parameter counts and dtypes.")
    i.add_argument("dir", nargs="?", default="default",
                   help="checkpoint directory (default: the shipped default model)")
    i.add_argument("--json", action="store_true", help="print JSON")

    v = sub.add_parser("verify", help="check a converted checkpoint's files against their recorded hashes",
                       description="Check every file of a converted checkpoint against the hashes recorded "
                                   "when it was written (e.g. after copying it to a pod's storage).")
    v.add_argument("dir", help="converted ti2v-jax checkpoint directory")

    m = sub.add_parser("make-tiny", help="write a tiny random-weight checkpoint in diffusers layout "
                                         "(for trying the tool and for tests: its videos are noise)",
                       description="Write a tiny random-weight checkpoint (diffusers layout). The same seed "
                                   "gives the same bytes.")
    m.add_argument("dir", help="output directory (must not exist unless --overwrite)")
    m.add_argument("--seed", type=_seed, default=0, help="weights seed (default 0)")
    m.add_argument("--overwrite", action="store_true", help="replace an existing DIR")

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
    metrics_cli.add_evaluate(sub, _number)
    metrics_cli.add_manifest(sub, _number)
    _add_plan(sub)
    return parser


def _add_plan(sub):
    p = sub.add_parser("plan", help="compile ahead for a TPU topology, GPU or this CPU: memory per chip, the "
                                    "largest batch that fits, FLOPs and a roofline bound per new frame",
                       description="Compile the pipeline's program for a target from any host (nothing is "
                                   "materialised; TPU topologies compile with libtpu on a CPU-only host) and "
                                   "report per chip: memory, fit, FLOPs and bytes per new frame, and bounds (not "
                                   "measurements) on time per new frame and videos per hour.")
    p.add_argument("--target", required=True, metavar="NAME",
                   help="a TPU topology (v5e:2x2, v5e:16x16, v6e:4x4, v5p:2x2x1, v4:2x2x1, ...), h100, h200 "
                        "(need jax's CUDA plugin), or cpu")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--model", default=None, metavar="DIR",
                   help="a converted or diffusers-layout checkpoint whose configs give the shapes "
                        "(default: the shipped default model)")
    g.add_argument("--config", choices=("ms-1.7b",), default=None,
                   help="the shipped configs of ModelScope text-to-video-ms-1.7b instead of a checkpoint")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="U-Net dtype (default: the target platform's, bfloat16 on TPU/GPU)")
    p.add_argument("--vae-text-dtype", choices=DTYPES + ("same",), default="float32",
                   help="VAE and text encoder (default float32)")
    p.add_argument("--batch-per-chip", default="1", metavar="N|auto",
                   help="videos per chip and call, or 'auto': the largest that fits, found by compiling")
    p.add_argument("--num-frames", type=_number("--num-frames", int, 2), default=None, metavar="K",
                   help="frames K the video model denoises at once (default: the checkpoint's, else 16)")
    p.add_argument("--t2v", action="store_true", help="plan the text-to-video program instead of TI2V")
    p.add_argument("--save-executables", default=None, metavar="DIR",
                   help="serialise the compiled program into DIR for `ti2v-jax batch --executables DIR`")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    st.add_arguments(p.add_argument_group("sampler settings"))


def _cmd_plan(a):
    # Planning runs nothing on this host's accelerators: only its CPU is started (libtpu, where
    # installed, is loaded by the topology description alone, and says nothing on a host without a TPU).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from ti2v_jax import plan, platforms
    from ti2v_jax.errors import SettingsError

    b = a.batch_per_chip
    if b != "auto":
        try:
            b = int(b)
        except ValueError:
            raise SettingsError(f"--batch-per-chip must be a whole number or 'auto', got {b!r}") from None
    target = plan.resolve_target(a.target)
    if a.config == "ms-1.7b":
        configs = plan.ms17b_configs()
    else:
        from ti2v_jax.pipeline import resolve_model
        configs = plan.checkpoint_configs(resolve_model(a.model))
    say = (lambda line: None) if a.json else (lambda line: print(f"ti2v-jax plan: {line}", file=sys.stderr))
    report = plan.plan(target, configs=configs, dtype=a.dtype or platforms.platform_defaults(target.platform)["dtype"],
                       vae_text_dtype=a.vae_text_dtype, batch_per_chip=b, num_frames=a.num_frames, t2v=a.t2v,
                       settings=st.SamplerSettings(**st.from_args(a)), save_executables=a.save_executables,
                       log=say)
    print(json.dumps(report.as_dict(), indent=1, default=str) if a.json else report.text())
    if report.fits is False:
        raise SettingsError(f"{report.batch_per_chip} video(s) per chip do not fit a {report.chip}: "
                            f"{report.resident_gib:.2f} GiB of {report.hbm_gib:g} GiB")


def _load_pipeline(a):
    import jax

    from ti2v_jax.pipeline import TI2VZeroPipeline
    aux = None if a.vae_text_dtype == "same" else a.vae_text_dtype
    parallel = getattr(a, "parallel", "none")
    # The weights go where the programs run, once: all devices for a mesh, the local ones for pmap.
    # Across processes each keeps its copy on a local device (its prompts are encoded there) and
    # the pipeline places the replicated copy once, on its first parallel call.
    devices = None
    if jax.process_count() == 1:
        devices = {"mesh": jax.devices, "pmap": jax.local_devices}.get(parallel, lambda: None)()
    return TI2VZeroPipeline.from_pretrained(a.model, dtype=a.dtype, vae_text_dtype=aux, num_frames=a.num_frames,
                                            verify=not a.no_verify, devices=devices, executables=a.executables)


def _cmd_convert(a):
    from ti2v_jax.weights.convert import convert_checkpoint
    report = convert_checkpoint(a.src, a.dst, dtype=a.dtype, source_format=a.source_format, overwrite=a.overwrite,
                                variant=a.variant)
    print(report.summary())


def _cmd_info(a):
    from ti2v_jax.loading import describe
    from ti2v_jax.pipeline import resolve_model
    info = describe(resolve_model(a.dir))
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


def _cmd_verify(a):
    from ti2v_jax.weights.integrity import verify_checkpoint
    r = verify_checkpoint(a.dir)
    extra = f"; not recorded: {', '.join(r['unrecorded'])}" if r["unrecorded"] else ""
    print(f"{r['directory']}: {r['files']} files, {r['bytes'] / 2**20:.1f} MiB match their {r['algorithm']} "
          f"hashes{extra}")


def _cmd_make_tiny(a):
    from ti2v_jax.tiny import make_tiny
    make_tiny(a.dir, seed=a.seed, overwrite=a.overwrite)
    print(f"wrote a tiny RANDOM-weight checkpoint (diffusers layout) to {a.dir}; its videos are noise")


def _cmd_generate(a):
    from ti2v_jax.io import check_output_path, save_video
    from ti2v_jax.tokenizer import check_prompts
    check_prompts(a.prompt)  # fail before loading anything
    check_output_path(a.out)
    pipe = _load_pipeline(a)
    t0 = time.perf_counter()
    images = a.image if len(a.image) > 1 else a.image[0]
    video = pipe(images, a.prompt, seed=a.seed, parallel=a.parallel, given_frames_as_video=len(a.image) > 1,
                 progress=True, **st.from_args(a)).frames
    save_video(video, a.out, fps=a.fps)
    print(f"wrote {a.out}: {video.shape[0]} frames of {video.shape[1]}x{video.shape[2]} "
          f"in {time.perf_counter() - t0:.1f} s")


def _cmd_t2v(a):
    from ti2v_jax.io import check_output_path, save_video
    from ti2v_jax.tokenizer import check_prompts
    check_prompts(a.prompt)
    check_output_path(a.out)
    pipe = _load_pipeline(a)
    video = pipe.text_to_video(a.prompt, seed=a.seed, parallel=a.parallel, progress=True,
                               **st.from_args(a, T2V_SETTINGS)).frames
    save_video(video, a.out, fps=a.fps)
    print(f"wrote {a.out}: {video.shape[0]} frames of {video.shape[1]}x{video.shape[2]}")


def _cmd_batch(a):
    from ti2v_jax import batch
    from ti2v_jax.distributed import initialize_distributed
    from ti2v_jax.manifest import parse_grid
    initialize_distributed(a.distributed)
    grid = parse_grid(a.grid, a.grid_json) if a.command == "sweep" else None
    pipe = _load_pipeline(a)
    kw = dict(defaults=st.from_args(a), base_seed=a.seed, batch_size=a.batch_size, parallel=a.parallel,
              fmt=a.format, fps=a.fps, process_index=a.process_index, process_count=a.process_count,
              max_items=a.max_items, progress=not a.no_progress, model_name=str(a.model or "default"),
              claim_timeout=a.claim_timeout)
    if grid is None:
        results = [batch.run_batch(pipe, a.manifest, a.out_dir, **kw)]
    else:
        results = list(batch.run_sweep(pipe, a.manifest, a.out_dir, grid, **kw).values())
    for r in results:
        print(r.summary())
    return 1 if any(r.errors for r in results) else 0


COMMANDS = {"generate": _cmd_generate, "t2v": _cmd_t2v, "convert": _cmd_convert, "info": _cmd_info,
            "verify": _cmd_verify, "make-tiny": _cmd_make_tiny, "batch": _cmd_batch, "sweep": _cmd_batch,
            "evaluate": metrics_cli.run_evaluate, "manifest": metrics_cli.run_manifest, "plan": _cmd_plan}


# Errors of the machine rather than of the code: a full disk, a missing or unwritable path.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                       errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG,
                       errno.EMFILE, errno.ENFILE, errno.EIO, errno.EBUSY, errno.ELOOP}


def _user_error(e: BaseException) -> bool:
    """True for failures caused by the input or the environment, not by a bug: the
    `ti2v_jax.errors` classes (what the code raises for what it was given), running out of
    memory, and the operating system's refusals (disk full, permissions, missing paths).
    Any other ValueError, TypeError, KeyError or OSError, ours or a library's, is a bug."""
    from ti2v_jax.errors import TI2VError
    if isinstance(e, (TI2VError, MemoryError)):
        return True
    if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
        return True
    # XLA's out-of-memory error is a RuntimeError subclass with RESOURCE_EXHAUSTED in its text.
    return type(e).__name__ == "XlaRuntimeError" and "RESOURCE_EXHAUSTED" in str(e)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.strerror}: {e.filename}"
    elif type(e).__name__ == "XlaRuntimeError":
        text = "out of device memory: " + text[:300] + "; reduce the batch, size or frames"
    return text if len(text) <= 500 else text[:497] + "..."


_INTERRUPTED = "interrupted; nothing was written for the unfinished output"


def console() -> int:
    """The `ti2v-jax` console entry point: `main()` with Ctrl-C honoured at any time."""
    if not _COMMAND_LINE:  # called from elsewhere: install it now
        _watch_interrupts()
    rc = main()
    if rc == 130:  # leave at once: XLA threads may still be compiling
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    return rc


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """Python warnings (ours, PIL's, ...) as one log line each, without the source location."""
    logging.getLogger("ti2v_jax").warning("%s: %s", category.__name__, " ".join(str(message).split()))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ti2v_jax import env
    from ti2v_jax.errors import SettingsError
    try:  # every switch is read here first, so a misspelt value stops the command before any work
        debug = [env.flag(name) for name in env.SWITCHES][env.SWITCHES.index(env.DEBUG)] or args.debug
    except SettingsError as e:
        print(f"ti2v-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="ti2v-jax: %(message)s")
    logging.getLogger("ti2v_jax").setLevel(logging.INFO)  # our notices; other libraries' warnings only
    prefix = f"ti2v-jax {args.command}"
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            return COMMANDS[args.command](args) or 0  # None: success
    except BrokenPipeError:  # the reader went away (e.g. `| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prefix}: {_INTERRUPTED}", file=sys.stderr)
        return 130
    except Exception as e:  # the boundary: one line, unless --debug
        if debug:
            raise
        if _user_error(e):
            print(f"{prefix}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        print(f"{prefix}: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(rerun with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(console())
