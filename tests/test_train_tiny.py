"""train/train_tiny.py, the script that makes the default model, runs end to end.

The `smoke` profile (a few steps of every stage, the guidance-consistency finish included)
with the guidance-consistency pairs on in the first U-Net stage too:
every stage logs, checkpoints and exports a converted model directory that loads and
generates. Training quality is `tests/test_default_model.py`'s business (the shipped weights).
"""

import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ti2v_jax import loading
from ti2v_jax.toy import evaluation, synthetic

SCRIPT = Path(__file__).resolve().parents[1] / "train" / "train_tiny.py"


@pytest.mark.slow
def test_train_tiny_smoke_profile_exports_a_working_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))   # importable by name: its data workers are spawned
    train_tiny = importlib.import_module("train_tiny")
    wd = tmp_path / "work"
    train_tiny.main(["--workdir", str(wd), "--profile", "smoke", "--consistency-pairs", "1",
                     "--consistency-weight", "1", "--last-frame-weight", "3"])

    records = [json.loads(line) for line in (wd / "log.jsonl").read_text().splitlines()]
    stages = ("vae", "unet", "unet_finish")
    losses = {s: [r["loss"] for r in records if r.get("stage") == s and "loss" in r] for s in stages}
    assert all(losses.values()), losses
    assert all(math.isfinite(v) for s in stages for v in losses[s])
    assert all((wd / f"ckpt_{s}").is_dir() for s in stages)
    done = [r for r in records if r.get("stage") == "done"]
    assert done and done[0]["consistency_pairs"] == 1 and done[0]["unet_steps_done"] == 4
    assert done[0]["finish_steps_done"] == 2 and done[0]["finish"]["consistency_pairs"] == 1

    out = wd / "default_model"
    index = json.loads((out / "model_index.json").read_text())
    assert index["num_frames"] == synthetic.NUM_FRAMES
    assert index["training"]["profile"] == "smoke" and index["training"]["consistency_weight"] == 1.0
    model = loading.load(out)
    images, prompts, _ = evaluation.eval_cases(1, 0)
    video = evaluation.run_variant(model, images, prompts, num_new_frames=1, num_steps=2, resample_iters=0)
    assert video.shape == (1, 2, synthetic.SIZE, synthetic.SIZE, 3) and video.dtype == np.uint8
