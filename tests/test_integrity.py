"""Checkpoints prove their integrity: recorded checksums, verified on load and by
`verify_checkpoint`; damaged files are one-line errors naming the file.

Every case works on a copy of the tiny converted checkpoint (`conftest.tiny_converted_dir`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from ti2v_jax import loading
from ti2v_jax.errors import CheckpointError, CheckpointNotFoundError, IntegrityError
from ti2v_jax.weights import integrity
from ti2v_jax.weights.integrity import verify_checkpoint

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "ti2v_jax" / "assets" / "default_model"


@pytest.fixture()
def copy(tiny_converted_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_converted_dir, dst)
    return dst


def _largest(d: Path) -> Path:
    """The biggest file under `d`: the parameters' uncompressed data."""
    return max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _one_line(e, *names):
    msg = str(e.value)
    print(type(e.value).__name__ + ":", msg)
    assert "\n" not in msg, msg
    for n in names:
        assert n in msg, (n, msg)
    return msg


def _flip_bits(path: Path, count: int = 100, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.choice(len(data) * 8, size=count, replace=False):
        data[pos // 8] ^= 1 << int(pos % 8)
    path.write_bytes(bytes(data))


def test_record_covers_every_file_and_verifies(copy):
    record = json.loads((copy / integrity.CHECKSUMS).read_text())
    files = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file())
    assert record["algorithm"] == "sha256"
    assert sorted(record["files"]) == [f for f in files if f != integrity.CHECKSUMS]
    summary = verify_checkpoint(copy)
    print(summary)
    assert summary["files"] == len(files) - 1 and summary["unrecorded"] == []
    assert summary["bytes"] == sum((copy / f).stat().st_size for f in record["files"])


def test_bit_flips_in_the_unet_data_are_caught(copy):
    data = _largest(copy / "unet")
    _flip_bits(data)
    rel = data.relative_to(copy).as_posix()
    with pytest.raises(IntegrityError) as e:
        loading.load(copy, components=("unet",), tokenizer=False)
    _one_line(e, rel, "sha256")
    with pytest.raises(IntegrityError) as e:
        verify_checkpoint(copy)
    _one_line(e, rel)
    # The other networks' files are intact: loading just them verifies only theirs.
    loading.load(copy, components=("text_encoder",), tokenizer=False)


@pytest.mark.slow
def test_verify_false_and_the_environment_skip_the_check(copy, tiny_converted_dir, monkeypatch):
    data = _largest(copy / "unet")
    _flip_bits(data)
    good = loading.load(tiny_converted_dir, components=("unet",), tokenizer=False)

    def load_unchecked(**kw):
        """The flipped bits, read without the hash check: loaded, or refused by the reader's own
        decoding (the flips can land in compressed chunks) -- never an IntegrityError."""
        try:
            return loading.load(copy, components=("unet",), tokenizer=False, **kw)
        except IntegrityError:
            raise AssertionError("the hash check ran although it was switched off") from None
        except CheckpointError as e:
            assert "cannot read the parameters" in str(e), e
            return None

    bad = load_unchecked(verify=False)
    if bad is not None:
        changed = sum(int((np.asarray(a) != np.asarray(b)).sum())
                      for a, b in zip(jax.tree.leaves(good.params), jax.tree.leaves(bad.params)))
        print("parameters changed by 100 flipped bits:", changed)
        assert changed > 0  # the check was really skipped: the flipped bits were loaded
    monkeypatch.setenv("TI2V_NO_VERIFY", "1")
    load_unchecked()


def test_truncated_file(copy):
    data = _largest(copy / "unet")
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(IntegrityError) as e:
        loading.load(copy, components=("unet",), tokenizer=False)
    _one_line(e, data.relative_to(copy).as_posix(), "truncated")
    # Without the check, the reader's own failure is one line too.
    with pytest.raises(CheckpointError) as e:
        loading.load(copy, components=("unet",), tokenizer=False, verify=False)
    _one_line(e, "unet")


@pytest.mark.parametrize("victim", ["vae/params/manifest.ocdbt", "tokenizer/", "model_index.json"])
def test_missing_file(copy, victim):
    if victim.endswith("/"):  # the first file of a directory (the tokenizer's names vary by transformers version)
        victim = min(p.relative_to(copy).as_posix() for p in (copy / victim).iterdir())
    (copy / victim).unlink()
    with pytest.raises(CheckpointNotFoundError) as e:
        verify_checkpoint(copy)
    _one_line(e, victim)
    if victim != "model_index.json":  # without an index it is not a checkpoint at all (also one line)
        with pytest.raises(CheckpointNotFoundError) as e:
            loading.load(copy)
        _one_line(e, victim, "missing")


def test_damaged_metadata(copy):
    meta = copy / "unet" / "params" / "_METADATA"
    meta.write_bytes(b"{ not json" + meta.read_bytes()[10:])
    with pytest.raises(IntegrityError) as e:
        loading.load(copy, components=("unet",), tokenizer=False)
    _one_line(e, "unet/params/_METADATA")
    with pytest.raises(CheckpointError) as e:
        loading.load(copy, components=("unet",), tokenizer=False, verify=False)
    _one_line(e, "unet", "metadata")
    with pytest.raises(CheckpointError) as e:
        loading.describe(copy)
    _one_line(e, "unet")


def test_damaged_record(copy):
    (copy / integrity.CHECKSUMS).write_text('{"algorithm": "sha256", "files": [1, 2]}')
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(copy)
    _one_line(e, integrity.CHECKSUMS)


@pytest.mark.parametrize("how", ["emptied", "one entry removed"])
def test_a_record_that_leaves_out_a_data_file_is_an_integrity_error(copy, how):
    """An emptied or partial record must not turn the check off: the bit-flipped file it no
    longer lists is refused on loading and by `verify`."""
    data = _largest(copy / "unet")
    rel = data.relative_to(copy).as_posix()
    record = json.loads((copy / integrity.CHECKSUMS).read_text())
    if how == "emptied":
        record["files"] = {}
    else:
        del record["files"][rel]
    (copy / integrity.CHECKSUMS).write_text(json.dumps(record))
    _flip_bits(data)
    named = "model_index.json" if how == "emptied" else rel  # the first uncovered file, in name order
    with pytest.raises(IntegrityError) as e:
        loading.load(copy, components=("unet",), tokenizer=False)
    _one_line(e, named, "not covered")
    with pytest.raises(IntegrityError) as e:
        verify_checkpoint(copy)
    _one_line(e, named, "not covered")


def test_older_checkpoint_without_record_loads_with_a_warning(copy, caplog):
    (copy / integrity.CHECKSUMS).unlink()
    with caplog.at_level(logging.WARNING):
        c = loading.load(copy, components=("text_encoder",))
    assert c.text_encoder is not None
    assert any(integrity.CHECKSUMS in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(copy)
    _one_line(e, integrity.CHECKSUMS)


def test_config_of_the_wrong_type(copy):
    cfg = copy / "vae" / "config.json"
    config = json.loads(cfg.read_text())
    config["block_out_channels"] = "32, 64"
    cfg.write_text(json.dumps(config))
    with pytest.raises(IntegrityError) as e:  # edited after conversion: the record notices first
        loading.load(copy, components=("vae",), tokenizer=False)
    _one_line(e, "vae/config.json")
    integrity.write_checksums(copy)  # as if it had been written so
    with pytest.raises(CheckpointError) as e:
        loading.load(copy, components=("vae",), tokenizer=False)
    _one_line(e, "vae/config.json")


def test_missing_tokenizer_says_what_is_missing(copy):
    shutil.rmtree(copy / "tokenizer")
    integrity.write_checksums(copy)
    with pytest.raises(CheckpointNotFoundError) as e:
        loading.load(copy, components=("text_encoder",))
    _one_line(e, "tokenizer", "no tokenizer")
    loading.load(copy, components=("text_encoder",), tokenizer=False)  # not needed: fine


def test_conversion_writes_the_record_last(tiny_diffusers_dir, tmp_path):
    from ti2v_jax.weights.convert import convert_checkpoint

    dst = tmp_path / "fresh"
    convert_checkpoint(tiny_diffusers_dir, dst, components=("text_encoder",))
    summary = verify_checkpoint(dst)
    assert summary["files"] == len([p for p in dst.rglob("*") if p.is_file()]) - 1
    (dst / "extra.txt").write_text("added by hand")
    assert verify_checkpoint(dst)["unrecorded"] == ["extra.txt"]  # reported, not an error


def test_shipped_default_model_has_a_record_and_verifies():
    summary = verify_checkpoint(DEFAULT_MODEL)
    print(summary)
    assert summary["files"] >= 40 and summary["unrecorded"] == []


# ---- PyTorch-side files -------------------------------------------------------------

def test_safetensors_with_an_impossible_header(tiny_diffusers_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_diffusers_dir, src)
    bad = src / "text_encoder" / "model.safetensors"
    data = bad.read_bytes()
    bad.write_bytes((2 ** 62).to_bytes(8, "little") + data[8:])
    with pytest.raises(CheckpointError) as e:
        loading.load(src, components=("text_encoder",), tokenizer=False)
    _one_line(e, "model.safetensors")


def test_pickle_with_objects_is_refused_in_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    from ti2v_jax.weights import torch_io

    path = tmp_path / "pytorch_model.bin"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "when": logging.LogRecord("x", 1, "p", 1, "m", None, None)},
               path)
    with pytest.raises(CheckpointError) as e:
        torch_io.read_torch_pickle(path)
    msg = _one_line(e, str(path))
    assert "weights_only" not in msg
