"""Parity: our Flax CLIPTextModel against transformers' on tiny random weights.

The parity tests need torch (transformers' model is the reference) and skip without it:
they never compare ti2v-jax with itself.
"""

import warnings

import numpy as np
import pytest
from flax import nnx

from helpers import flax_from_state, perturb_, torch_state_numpy

from ti2v_jax import MS17B_CONFIGS
from ti2v_jax import tokenizer as tok_lib
from ti2v_jax.models import clip_text
from ti2v_jax.weights import mapping


def _port(model_cls, config, torch_state, module):
    """Our model filled from a PyTorch state dict through `mapping.fill_params` (tests/helpers.py)."""
    model, skipped = flax_from_state(lambda: model_cls(config, rngs=nnx.Rngs(0)), torch_state,
                                     renames=module.TORCH_RENAMES, ignore=module.TORCH_IGNORE)
    return model, skipped


def _torch():
    """torch, or a skip: transformers' CLIPTextModel (the reference) needs it."""
    return pytest.importorskip("torch", reason="torch is not installed: no transformers CLIPTextModel to compare with")


PROMPTS = [
    "The cat and the dog",
    "",
    "a dog running in the rain, then the cat sleeping on a red sofa!",
    " ".join(["then the cat"] * 30),  # > 77 tokens: truncated
]


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_clip_text_matches_transformers(tmp_path, act):
    torch = _torch()
    from transformers import CLIPTextConfig
    from transformers import CLIPTextModel as TorchCLIPTextModel

    tok = tok_lib.load_tokenizer(tok_lib.write_tiny_tokenizer(tmp_path / "tokenizer"))
    with pytest.warns(UserWarning, match="then the cat then the cat") as record:
        ids = tok_lib.tokenize(tok, PROMPTS)
    assert len(record) == 1
    assert ids.shape == (len(PROMPTS), 77) and ids.dtype == np.int32
    assert ids[1, 0] == tok.bos_token_id and ids[1, 1] == tok.eos_token_id and ids[1, 2] == tok.pad_token_id
    assert ids[3, -1] == tok.eos_token_id

    config = dict(vocab_size=tok_lib.TINY_VOCAB_SIZE, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=77, hidden_act=act, layer_norm_eps=1e-5,
                  bos_token_id=tok.bos_token_id, eos_token_id=2, pad_token_id=1, projection_dim=16)
    torch.manual_seed(0)
    ref = TorchCLIPTextModel(CLIPTextConfig(**config)).eval()
    state = torch_state_numpy(perturb_(ref, 0.1, seed=1 if act == "gelu" else 2))
    # Checkpoints from older transformers (ModelScope's) carry the buffer, and the prefix.
    state["text_model.embeddings.position_ids"] = np.arange(77)[None]
    model, skipped = _port(clip_text.CLIPTextModel, {"_name_or_path": "x", **config}, state, clip_text)
    assert skipped == ["text_model.embeddings.position_ids"]

    with torch.no_grad():
        want = ref(torch.from_numpy(ids).long()).last_hidden_state.numpy()
    got = np.asarray(model(ids))
    err = np.abs(got - want).max()
    print(f"CLIP ({act}) last_hidden_state max abs err: {err:.3e}")
    assert got.shape == want.shape
    assert err <= 1e-4


def test_clip_text_config_errors():
    with pytest.raises(ValueError, match="hidden_act"):
        clip_text.CLIPTextModel(dict(hidden_act="relu", hidden_size=8, num_attention_heads=2, num_hidden_layers=1))
    with pytest.raises(ValueError, match="rope_theta"):
        clip_text.CLIPTextModel(dict(rope_theta=1.0))


def test_tokenizer_basics(tmp_path):
    tok = tok_lib.load_tokenizer(tok_lib.write_tiny_tokenizer(tmp_path))
    assert len(tok) == tok_lib.TINY_VOCAB_SIZE
    assert tok.pad_token == "!" and tok.pad_token_id == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids = tok_lib.tokenize(tok, "the cat", max_length=8)
    assert ids.tolist() == [[tok.bos_token_id, tok.convert_tokens_to_ids("the</w>"),
                             tok.convert_tokens_to_ids("cat</w>"), tok.eos_token_id, 0, 0, 0, 0]]


def test_real_modelscope_config_maps_key_for_key():
    """The real text-to-video-ms-1.7b text-encoder config, with transformers 4.27's key names."""
    import json

    torch = _torch()
    from transformers import CLIPTextConfig
    from transformers import CLIPTextModel as TorchCLIPTextModel

    path = MS17B_CONFIGS / "text_encoder.json"
    config = json.loads(path.read_text())
    with torch.device("meta"):
        ref = TorchCLIPTextModel(CLIPTextConfig(**config))
    state = {"text_model." + k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in ref.state_dict().items()}
    state["text_model.embeddings.position_ids"] = np.arange(77)[None]
    abstract = nnx.eval_shape(lambda: clip_text.CLIPTextModel(config))
    shapes = {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    params, skipped = mapping.fill_params(shapes, mapping.rename_keys(state, clip_text.TORCH_RENAMES),
                                          ignore=clip_text.TORCH_IGNORE)
    assert skipped == ["text_model.embeddings.position_ids"]
    assert len(params) == len(shapes) == len(state) - 1 == 4 + 16 * 23
