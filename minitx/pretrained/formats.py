"""Reading checkpoint files into NumPy arrays: safetensors and llama.cpp's GGUF.

The files are read by their own libraries (`safetensors`, `gguf`); this module only hands back
{name: float32 array} and, for GGUF, the metadata. A GGUF file from llama.cpp differs from the
Hugging Face checkpoint it was converted from in two ways, both undone here so that every Llama
checkpoint reaches the name map in the Hugging Face form:
  - names: `blk.3.attn_q.weight` for `model.layers.3.self_attn.q_proj.weight`, and so on;
  - the rows of q and k: llama.cpp rotates the pairs (x[2i], x[2i+1]) of each head, Hugging Face
    (and minitx) the pairs (x[i], x[i + D/2]), so the converter reordered the rows of Wq and Wk
    within each head from [first halves; second halves] to interleaved.
"""
import numpy

GGUF_NAMES = {  # llama.cpp name -> Hugging Face name ("{i}" is the layer)
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def read_safetensors(path):
    """{name: array} of a .safetensors file."""
    from safetensors.numpy import load_file
    return load_file(path)


def read_gguf(path):
    """(metadata {key: value}, {Hugging Face name: float32 array}) of a llama.cpp GGUF file,
    quantised tensors dequantised and q/k rows back in Hugging Face order."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    reader = GGUFReader(path)
    meta = {key: field.contents() for key, field in reader.fields.items()}
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{path}: GGUF architecture {meta.get('general.architecture')!r} is not "
                         "supported (only 'llama')")
    n_head = meta["llama.attention.head_count"]
    n_kv_head = meta.get("llama.attention.head_count_kv", n_head)
    tensors = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        w = numpy.asarray(dequantize(t.data, t.tensor_type), dtype=numpy.float32)  # (d_out, d_in)
        if name.endswith("q_proj.weight"):
            w = unpermute_rope_rows(w, n_head)
        elif name.endswith("k_proj.weight"):
            w = unpermute_rope_rows(w, n_kv_head)
        tensors[name] = w
    return meta, tensors


def hf_name(gguf_name):
    """The Hugging Face name of a llama.cpp tensor name (unknown names pass through)."""
    parts = gguf_name.split(".")
    layer = parts[1] if parts[0] == "blk" else None
    pattern = ".".join(["blk", "{i}"] + parts[2:]) if layer is not None else gguf_name
    return GGUF_NAMES[pattern].format(i=layer) if pattern in GGUF_NAMES else gguf_name


def unpermute_rope_rows(w, n_head):
    """Rows of each head from llama.cpp's interleaved order (pair i at rows 2i, 2i+1) back to
    halves (pair i at rows i, i + D/2): w (n_head * D, d_in)."""
    d_in = w.shape[1]
    return w.reshape(n_head, -1, 2, d_in).swapaxes(1, 2).reshape(w.shape)  # (H, D/2, 2) -> (H, 2, D/2)
