"""CLIP tokenizer: load one offline, tokenize prompts to fixed-length ids, write a tiny one.

Prompts are tokenized as the original ModelScope/TI2V-Zero pipeline tokenizes them,
with OpenCLIP's `SimpleTokenizer` (open_clip/tokenizer.py): the text is cleaned
(`clean_prompt`: ftfy.fix_text, HTML-unescaped twice, whitespace collapsed, lower-cased),
split with OpenCLIP's pattern, and each piece byte-encoded and BPE-merged with the
checkpoint's vocabulary and merges. The vocabulary and the BPE merging come from the
checkpoint's tokenizer, loaded with transformers' `CLIPTokenizer` (pure text processing,
no PyTorch); its own normalisation and pre-tokenisation are bypassed, because they differ
from OpenCLIP's between transformers versions (5.x: NFC, whitespace, per-character
lower case, no ftfy, no HTML unescaping; 4.x: ftfy only if installed, else BERT's basic
tokenizer, which splits Chinese characters apart). So the cleaning happens once, here,
for every checkpoint layout. `write_tiny_tokenizer` writes a small but real CLIP BPE
tokenizer for tests and `make-tiny` checkpoints.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import os
import warnings

import numpy as np

from ti2v_jax.errors import InputError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
# ModelScope's text-to-video-ms-1.7b ships Stable Diffusion 2's OpenCLIP tokenizer,
# which pads with "!" (id 0 in CLIP's vocabulary), as open_clip pads with zeros.
PAD = "!"

# A few merges, enough to exercise multi-symbol BPE tokens in tests.
_TINY_MERGES = [
    ("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n</w>"), ("e", "r"),
    ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("a", "t"), ("in", "g</w>"),
    ("r", "e"), ("s", "t"), ("an", "d</w>"), ("o", "f</w>"),
]


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_bpe_vocab(merges) -> dict[str, int]:
    """A CLIP BPE vocabulary in CLIP's order: 256 byte symbols, their end-of-word forms,
    one token per merge (a repeated one kept once), then BOS, EOS."""
    chars = list(_bytes_to_unicode().values())
    tokens = dict.fromkeys(chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS])
    return {t: i for i, t in enumerate(tokens)}


def write_clip_bpe_tokenizer(directory, merges) -> str:
    """Write transformers' CLIPTokenizer files (vocab.json, merges.txt, special tokens, config).

    Padding is "!" to 77 tokens, as ModelScope's OpenCLIP tokenizer has it, and a "!"
    typed in a prompt stays BPE text ("!</w>", as in open_clip) instead of being taken
    for the padding token (split_special_tokens).
    """
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(clip_bpe_vocab(merges), f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        # CLIP's merges.txt starts with a version line that readers skip.
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": PAD}
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True,
                  errors="replace", add_prefix_space=False, split_special_tokens=True)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return str(directory)


def tiny_vocab() -> dict[str, int]:
    """The tiny tokenizer's vocabulary."""
    return clip_bpe_vocab(_TINY_MERGES)


TINY_VOCAB_SIZE = 256 * 2 + len(_TINY_MERGES) + 2  # 530


def write_tiny_tokenizer(directory) -> str:
    """Write a small working CLIP BPE tokenizer (vocab.json, merges.txt, configs) into `directory`."""
    assert len(tiny_vocab()) == TINY_VOCAB_SIZE
    return write_clip_bpe_tokenizer(directory, _TINY_MERGES)


class _DropNoTorchAdvice(logging.Filter):
    """Drops transformers' import-time advice that PyTorch (4.x: or TensorFlow/Flax) was not found."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Models won't be available and only tokenizers" not in record.getMessage()


def _clip_tokenizer_class():
    """transformers' CLIPTokenizer, imported without the "PyTorch was not found" advice.

    Tokenizing needs no PyTorch, so the advice transformers logs once, while it is first
    imported, only misleads. Just that record is dropped, only during the import; every
    other message and every error passes as usual.
    """
    log = logging.getLogger("transformers")
    quiet = _DropNoTorchAdvice()
    log.addFilter(quiet)
    try:
        from transformers import CLIPTokenizer
    finally:
        log.removeFilter(quiet)
    return CLIPTokenizer


def load_tokenizer(directory):
    """transformers' CLIPTokenizer from a local directory (never touches the network)."""
    return _clip_tokenizer_class().from_pretrained(str(directory), local_files_only=True)


# ---- prompts -> ids, as OpenCLIP's SimpleTokenizer ---------------------------------------

# OpenCLIP's own names for its special tokens: typed in a prompt, they are the special
# tokens (OpenCLIP matches them first and maps them through its BPE cache).
_OPENCLIP_BOS, _OPENCLIP_EOS = "<start_of_text>", "<end_of_text>"


@functools.cache
def _pattern():
    """OpenCLIP's pre-tokenizer: its special tokens, contractions, letter runs, single digits,
    runs of other non-space characters (the `regex` module, for \\p{L}/\\p{N})."""
    import regex

    return regex.compile(_OPENCLIP_BOS + "|" + _OPENCLIP_EOS +
                         r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)


def clean_prompt(text: str) -> str:
    """OpenCLIP's cleaning (`clean='lower'`): `basic_clean` (ftfy.fix_text, html.unescape twice,
    strip), `whitespace_clean` (runs of whitespace -> one space, strip), then lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


def _excerpt(prompt: str, width: int = 60) -> str:
    r = repr(prompt)
    return r if len(r) <= width else r[:width - 4] + "...'"


def _check_prompt(index: int, prompt) -> str:
    """The prompt itself if it is text; else an InputError naming what is wrong with it."""
    if isinstance(prompt, (bytes, bytearray)):
        raise InputError(f"prompt {index} is {type(prompt).__name__}, not text; decode it first "
                         f"(e.g. prompt.decode('utf-8'))")
    if not isinstance(prompt, str):
        raise InputError(f"prompt {index} is {type(prompt).__name__}, not text; pass prompts as str")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates, e.g. a non-UTF-8 byte read through surrogateescape
        raise InputError(f"prompt {index} {_excerpt(prompt)} is not valid text: {prompt[e.start]!r} at position "
                         f"{e.start} is a lone surrogate (a byte that was not UTF-8?); pass the prompt as UTF-8"
                         ) from None
    return prompt


def check_prompts(prompts) -> list[str]:
    """A prompt or list of prompts -> list of str, or `InputError` naming the first one that is not text.

    What `tokenize` checks first; callers can run it before loading a model so that a bad
    prompt fails at once.
    """
    if isinstance(prompts, (str, bytes, bytearray)):
        prompts = [prompts]
    return [_check_prompt(i, p) for i, p in enumerate(prompts)]


def _bpe_ids(tokenizer, piece: str) -> list[int]:
    """Ids of one byte-encoded pre-token, BPE-merged with `tokenizer`'s own vocabulary and merges."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # tokenizers-backed (transformers 5, or a 4.x "Fast" tokenizer)
        return [t.id for t in backend.model.tokenize(piece)]
    return [tokenizer.encoder[t] for t in tokenizer.bpe(piece).split(" ")]  # transformers 4.x python CLIPTokenizer


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """One prompt -> its token ids, without BOS/EOS, exactly as OpenCLIP's `SimpleTokenizer.encode`."""
    byte_encoder = _bytes_to_unicode()
    ids = []
    for piece in _pattern().findall(clean_prompt(prompt)):
        if piece == _OPENCLIP_BOS:
            ids.append(tokenizer.bos_token_id)
        elif piece == _OPENCLIP_EOS:
            ids.append(tokenizer.eos_token_id)
        else:
            ids.extend(_bpe_ids(tokenizer, "".join(byte_encoder[b] for b in piece.encode("utf-8"))))
    return ids


def tokenize(tokenizer, prompts, max_length: int = 77) -> np.ndarray:
    """Prompts -> (len(prompts), max_length) int32 ids: BOS, text, EOS, padding; too long is cut.

    As OpenCLIP's `tokenize`: each prompt is cleaned and encoded (`encode_prompt`), framed
    by BOS and EOS, and padded with the tokenizer's padding id (0, "!", in CLIP's
    vocabulary, as OpenCLIP pads). A prompt longer than `max_length` tokens keeps its first
    `max_length` ids with the last one replaced by EOS (OpenCLIP's truncation), with a
    warning naming it. A prompt that is not text (bytes, a str holding lone surrogates from
    a non-UTF-8 command line) raises `InputError` (`check_prompts`), where OpenCLIP's ftfy
    would silently turn a lone surrogate into U+FFFD.
    """
    prompts = check_prompts(prompts)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.full((len(prompts), max_length), pad, dtype=np.int32)
    for row, prompt in zip(out, prompts):
        ids = [bos] + encode_prompt(tokenizer, prompt) + [eos]
        if len(ids) > max_length:
            warnings.warn(f"prompt has {len(ids)} tokens, more than {max_length}; it was truncated: {_excerpt(prompt)}",
                          stacklevel=2)
            ids = ids[:max_length]
            ids[-1] = eos
        row[:len(ids)] = ids
    return out
