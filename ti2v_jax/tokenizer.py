"""CLIP tokenizer: load one offline, tokenize prompts to fixed-length ids, write a tiny one.

The tokenizer itself is transformers' `CLIPTokenizer` (pure text processing, no
PyTorch). `write_tiny_tokenizer` writes a small but real CLIP BPE tokenizer for
tests and `make-tiny` checkpoints.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

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


def load_tokenizer(directory):
    """transformers' CLIPTokenizer from a local directory (never touches the network)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)


def tokenize(tokenizer, prompts, max_length: int = 77) -> np.ndarray:
    """Prompts -> (len(prompts), max_length) int32 ids: BOS, text, EOS, padding; too long is cut.

    A prompt longer than `max_length` tokens is truncated (keeping the final EOS, as
    transformers does) with a warning naming it.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    full = tokenizer(prompts, truncation=False, padding=False)["input_ids"]
    for prompt, ids in zip(prompts, full):
        if len(ids) > max_length:
            warnings.warn(f"prompt has {len(ids)} tokens, more than {max_length}; it was truncated: {prompt!r}",
                          stacklevel=2)
    ids = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True)["input_ids"]
    return np.asarray(ids, dtype=np.int32)
