"""The synthetic moving-shapes data: determinism, captions, motion, and the read-back analysis."""

import numpy as np
import pytest

from ti2v_jax.toy import evaluation, synthetic


def test_same_seed_same_clips_and_streams_differ():
    a, ca, sa = synthetic.make_batch(3, 16)
    b, cb, sb = synthetic.make_batch(3, 16)
    assert np.array_equal(a, b) and ca == cb and sa == sb
    c, _, _ = synthetic.make_batch(4, 16)
    assert not np.array_equal(a, c)
    d, _, _ = synthetic.make_batch(3, 16, stream=synthetic.EVAL)
    assert not np.array_equal(a, d)


def test_shapes_dtype_and_range():
    v, caps, specs = synthetic.make_batch(0, 8, num_frames=5, size=24)
    assert v.shape == (8, 5, 24, 24, 3) and v.dtype == np.uint8
    assert len(caps) == len(specs) == 8
    x = synthetic.to_model_range(v)
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1


def test_captions():
    caps = synthetic.all_captions()
    assert len(caps) == len(set(caps)) == len(synthetic.COLORS) * len(synthetic.SHAPES) * 4
    assert "a red circle moving left" in caps
    _, captions, specs = synthetic.make_batch(1, 64)
    for c, s in zip(captions, specs):
        assert c == f"a {s.color} {s.shape} moving {s.direction}"
        assert set(c.split()) <= set(synthetic.VOCABULARY)


def test_clips_cover_every_attribute():
    specs = synthetic.sample_specs(0, 400)
    assert {s.color for s in specs} == set(synthetic.COLORS)
    assert {s.shape for s in specs} == set(synthetic.SHAPES)
    assert {s.direction for s in specs} == set(synthetic.DIRECTIONS)
    holds = [s.hold for s in specs]
    assert 0.3 < np.mean([h > 0 for h in holds]) < 0.7 and max(holds) == synthetic.NUM_FRAMES - 2


def test_hold_heavy_clips():
    """The data of the default model's last training run: 80% of clips rest for 2..K-2 frames."""
    specs = synthetic.sample_specs(0, 400, hold_prob=0.8, min_hold=2)
    holds = np.array([s.hold for s in specs])
    assert 0.7 < np.mean(holds > 0) < 0.9
    assert set(holds[holds > 0]) == set(range(2, synthetic.NUM_FRAMES - 1))
    for s in specs:
        assert np.diff(s.centers(), axis=0)[-1] @ np.asarray(synthetic.DIRECTIONS[s.direction]) > 1.0
    with pytest.raises(ValueError, match="min_hold"):
        synthetic.sample_specs(0, 4, min_hold=synthetic.NUM_FRAMES - 1)


def test_object_stays_inside_and_moves_as_captioned():
    for s in synthetic.sample_specs(5, 200):
        c = s.centers()
        assert np.all(c - s.radius >= 0) and np.all(c + s.radius <= synthetic.SIZE)
        steps = np.diff(c, axis=0)
        unit = np.asarray(synthetic.DIRECTIONS[s.direction], np.float64)
        assert np.allclose(steps[: s.hold], 0)     # at rest during the hold
        assert np.all(steps @ unit >= -1e-9) and (steps @ unit)[-1] > 1.0  # then moving the captioned way


@pytest.mark.parametrize("seed", [0, 1])
def test_analysis_reads_back_rendered_clips(seed):
    """The evaluation's detector recovers colour, shape, position and direction from clean data."""
    videos, _, specs = synthetic.make_batch(seed, 24, stream=synthetic.EVAL, hold_prob=0.0)
    for vid, s in zip(videos, specs):
        det = evaluation.analyze_frame(vid[0])
        assert det.found and det.color == s.color and det.shape == s.shape, (s, det)
        cx, cy = s.centers(1)[0]
        offset = s.radius / 3 if s.shape == "triangle" else 0.0   # a triangle's centroid sits below its centre
        assert abs(det.x - cx) < 0.6 and abs(det.y - (cy + offset)) < 0.6
        m = evaluation.video_metrics(vid, s.color, s.shape, s.direction)
        assert m["direction_ok"] and m["color_all"] == 1.0 and m["jumps"] == 0.0


def test_caption_tokenizer_keeps_words_whole(tmp_path):
    from ti2v_jax.tokenizer import load_tokenizer, tokenize

    tok = load_tokenizer(synthetic.write_caption_tokenizer(tmp_path / "tok"))
    for w in synthetic.VOCABULARY:
        assert len(tok(w)["input_ids"]) == 3, w          # BOS, the word, EOS
    ids = tokenize(tok, ["a red circle moving left", "a red circle moving right", ""])
    assert ids.shape == (3, 77)
    assert (ids[0] != ids[1]).sum() == 1
    assert tok("an unseen word")["input_ids"]            # any text still tokenizes (byte fallback)
