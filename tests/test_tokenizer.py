"""Prompt tokenization against OpenCLIP's own tokenizer, bad prompts, and a quiet transformers import.

The reference is open_clip's `tokenizer.py` (the `open_clip_torch` package, installed
with `--no-deps`), loaded by file path: importing the `open_clip` package would import
torchvision. The full CLIP vocabulary is the one the package ships
(ti2v_jax/assets/clip_tokenizer), written as a transformers tokenizer directory exactly as
the ModelScope converter writes it.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from ti2v_jax import tokenizer as tok_lib
from ti2v_jax.errors import InputError, TI2VError

REPO = Path(__file__).resolve().parents[1]

# Prompts whose cleaning matters: (name, prompt).
AWKWARD = [
    ("curly quotes", "the \u201ccat\u201d isn\u2019t \u2018here\u2019"),
    ("&amp;amp;", "salt &amp;amp; pepper"),
    ("&lt;b&gt;", "&lt;b&gt;bold&lt;/b&gt; text"),
    ("full-width", "\uff21\uff22\uff23 \uff43\uff41\uff54"),
    ("fi ligature", "a \ufb01sh in a \ufb01eld"),
    ("emoji", "a \U0001f431 playing with a \U0001f436 \U0001f468\u200d\U0001f469\u200d\U0001f467"),
    ("accents", "caf\u00e9 na\u00efve r\u00e9sum\u00e9"),
    ("accents, decomposed", "cafe\u0301 nai\u0308ve"),
    ("chinese", "\u4e00\u53ea\u732b\u5728\u8df3\u821e"),
    ("tabs/newlines/nbsp", "a\tcat\n\n  on   a\r\nmat\u00a0now\u3000ok"),
    ("leading/trailing", "   a cat   "),
    ("upper case", "A CAT ON A MAT, DON'T MOVE"),
    ("over 77 tokens", " ".join(["then the cat jumped"] * 25)),
    ("empty", ""),
    ("only whitespace", " \t\n "),
    ("exclamation marks", "wow!!! a cat! !"),
    ("mojibake", "caf\u00c3\u00a9 \u00e2\u20ac\u0153hi\u00e2\u20ac\u009d"),
    ("greek final sigma", "\u039f\u0394\u039f\u03a3 \u03bf\u03b4\u03bf\u03c2"),
    ("special-token text", "<start_of_text> hi <|endoftext|> <end_of_text>"),
    ("html entities", "it&#39;s a&nbsp;cat &quot;ok&quot; &copy;"),
    ("control characters", "a\x00b\x07c\u200bd"),
    ("dotted capital I", "\u0130stanbul"),
    ("digits", "1234 frames at 30fps"),
]


@pytest.fixture(scope="module")
def openclip():
    """open_clip/tokenizer.py loaded by path (skips when open_clip_torch is not installed)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch is not installed (the README's reference line: pip install --no-deps "
                    "open_clip_torch==3.3.0 ...)")
    pytest.importorskip("torch", reason="open_clip's tokenizer.py imports torch")
    pytest.importorskip("ftfy", reason="open_clip's tokenizer.py imports ftfy")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_by_path", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=["modelscope", "saved_by_transformers"])
def clip_tok(request, tmp_path_factory):
    """The full CLIP tokenizer: as the ModelScope converter writes it (vocab.json + merges.txt),
    and as transformers re-saves it (tokenizer.json, the layout of diffusers checkpoints)."""
    from ti2v_jax.weights.modelscope import write_clip_tokenizer

    root = tmp_path_factory.mktemp("clip_tok")
    tok = tok_lib.load_tokenizer(write_clip_tokenizer(root / "modelscope"))
    if request.param == "saved_by_transformers":
        tok.save_pretrained(str(root / "saved"))
        assert (root / "saved" / "tokenizer.json").is_file()
        tok = tok_lib.load_tokenizer(root / "saved")
    return tok


def _ids(tok, prompts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tok_lib.tokenize(tok, prompts, **kw)


def test_awkward_prompts_match_openclip(openclip, clip_tok):
    prompts = [p for _, p in AWKWARD]
    want = openclip.tokenize(prompts).numpy()
    got = _ids(clip_tok, prompts)
    assert got.shape == want.shape == (len(prompts), 77) and got.dtype == np.int32
    print(f"\n{'prompt':22s} equal to OpenCLIP")
    for (name, _), g, w in zip(AWKWARD, got, want):
        print(f"{name:22s} {bool((g == w).all())}")
    for (name, prompt), g, w in zip(AWKWARD, got, want):
        assert g.tolist() == w.tolist(), f"{name}: {prompt!r}"
    # The cleaning did something on these (they would differ without it).
    assert _ids(clip_tok, "ＡＢＣ").tolist() == _ids(clip_tok, "abc").tolist()
    assert _ids(clip_tok, "&amp;amp;").tolist() == _ids(clip_tok, "&").tolist()


def test_random_prompts_and_context_lengths_match_openclip(openclip, clip_tok):
    """Seeded random prompts drawn from letters, accents, CJK, emoji, punctuation, entities, whitespace."""
    rng = random.Random(0)
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") * 3 +
                list("éèàçñøßÆŒﬁﬂＡｂ１一猫狗日本語한국어🐱🐶✨’“”«»!?.,;:'\"-_()[]<>/|\\&#%")
                + [" ", " ", " ", "  ", "\t", "\n", "\u00a0", "&amp;", "&lt;", "&#39;", "'s", "'ll"])
    prompts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(200)]
    want = openclip.tokenize(prompts).numpy()
    got = _ids(clip_tok, prompts)
    bad = [p for p, g, w in zip(prompts, got, want) if g.tolist() != w.tolist()]
    print(f"random prompts: {len(prompts) - len(bad)}/{len(prompts)} equal to OpenCLIP")
    assert not bad, bad[:3]
    for n in (2, 3, 8):  # OpenCLIP's truncation: first n ids, the last one set to EOS
        assert _ids(clip_tok, prompts, max_length=n).tolist() == openclip.tokenize(prompts, n).numpy().tolist()


def test_truncation_warns_and_keeps_bos_and_eos(clip_tok):
    prompt = " ".join(["then the cat jumped"] * 25)
    with pytest.warns(UserWarning, match="truncated") as record:
        ids = tok_lib.tokenize(clip_tok, [prompt, "a cat"])
    assert len(record) == 1 and "then the cat" in str(record[0].message)
    full = [clip_tok.bos_token_id] + tok_lib.encode_prompt(clip_tok, prompt)
    assert ids[0, :76].tolist() == full[:76] and ids[0, 76] == clip_tok.eos_token_id
    assert ids[1, 0] == clip_tok.bos_token_id and ids[1, 3] == clip_tok.eos_token_id and ids[1, 4:].max() == 0


def test_tiny_tokenizer_cleans_too(tmp_path):
    tok = tok_lib.load_tokenizer(tok_lib.write_tiny_tokenizer(tmp_path))
    want = tok_lib.tokenize(tok, "the cat")
    for prompt in ("  THE \t\n Cat ", "the&nbsp;cat", "ｔｈｅ ｃａｔ", "the&#32;cat", "the&amp;#32;cat"):
        assert tok_lib.tokenize(tok, prompt).tolist() == want.tolist(), prompt
    assert tok_lib.clean_prompt("  Salt &amp;amp; PEPPER\u2019s\t ﬁne  ") == "salt & pepper's fine"


@pytest.mark.parametrize("prompts, message", [
    (b"a cat", "prompt 0 is bytes, not text"),
    (["a cat", b"a dog"], "prompt 1 is bytes, not text"),
    (["a cat", None], "prompt 1 is NoneType, not text"),
    ([3], "prompt 0 is int, not text"),
    (["caf\udce9"], r"prompt 0 'caf\\udce9' is not valid text: '\\udce9' at position 3 is a lone surrogate"),
    (["\ud83d"], "is a lone surrogate"),
])
def test_prompts_that_are_not_text(tmp_path, prompts, message):
    tok = tok_lib.load_tokenizer(tok_lib.write_tiny_tokenizer(tmp_path))
    with pytest.raises(InputError, match=message) as info:
        tok_lib.tokenize(tok, prompts)
    with pytest.raises(InputError, match=message):
        tok_lib.check_prompts(prompts)
    assert isinstance(info.value, (TI2VError, ValueError))
    assert "\n" not in str(info.value)
    print(info.value)


def test_check_prompts_passes_text_through():
    assert tok_lib.check_prompts("a cat") == ["a cat"]
    assert tok_lib.check_prompts(("a", "caf\u00e9 \U0001f431")) == ["a", "caf\u00e9 \U0001f431"]


_NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRANSFORMERS_NO_ADVISORY_WARNINGS", None)
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_no_pytorch_advice_without_torch(tmp_path):
    """Without torch, loading and using a tokenizer prints nothing; other transformers warnings still show."""
    # The check can fail: a plain transformers import in the same torch-less process does print it.
    plain = _run(_NO_TORCH + "import transformers\n")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "PyTorch was not found" in plain.stderr or "None of PyTorch" in plain.stderr, plain.stderr

    ours = _run(_NO_TORCH + (
        "from ti2v_jax import tokenizer as t\n"
        f"tok = t.load_tokenizer(t.write_tiny_tokenizer({str(tmp_path / 'tok')!r}))\n"
        "print(t.tokenize(tok, ' The  CAT')[0, :4].tolist())\n"
        "from transformers.utils import logging\n"
        "logging.get_logger('transformers').warning('another transformers warning')\n"
        "assert sys.modules['torch'] is None\n"))
    print(ours.stderr)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert "PyTorch" not in ours.stderr and "Models won't be available" not in ours.stderr
    assert "another transformers warning" in ours.stderr
    want = tok_lib.tokenize(tok_lib.load_tokenizer(tmp_path / "tok"), "the cat")[0, :4].tolist()
    assert ours.stdout.strip() == str(want)
