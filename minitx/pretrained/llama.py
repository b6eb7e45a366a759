"""Llama-style decoders (Touvron et al. 2023) in the Hugging Face layout, as a minitx DecoderOnly.

A Llama layer is minitx's pre-norm Block with RMSNorm, rotary positions, grouped-query attention,
a SwiGLU MLP and no biases. A GGUF file is first brought to this layout by `formats.read_gguf`,
and its metadata to the keys of a Hugging Face config.json by `config_from_gguf`.
"""
from ..nn import DecoderOnly, TransformerConfig

IGNORED = ("model.rotary_emb.",)  # precomputed RoPE frequencies in some checkpoints
LAYER = {  # minitx name in Block -> Hugging Face names (k and v are one Linear in minitx)
    "ln_attn.weight": ["input_layernorm.weight"],
    "attn.q.weight": ["self_attn.q_proj.weight"],
    "attn.kv.weight": ["self_attn.k_proj.weight", "self_attn.v_proj.weight"],
    "attn.out.weight": ["self_attn.o_proj.weight"],
    "ln_mlp.weight": ["post_attention_layernorm.weight"],
    "mlp.gate.weight": ["mlp.gate_proj.weight"],
    "mlp.up.weight": ["mlp.up_proj.weight"],
    "mlp.down.weight": ["mlp.down_proj.weight"],
}


def config(hf):
    """A TransformerConfig from a Hugging Face Llama config.json (a dict)."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"config.json: model_type {hf.get('model_type')!r} is not 'llama'")
    if hf.get("rope_scaling"):
        raise ValueError("config.json: rope_scaling is not supported")
    d_head = hf["hidden_size"] // hf["num_attention_heads"]
    if hf.get("head_dim", d_head) != d_head:
        raise ValueError(f"config.json: head_dim {hf['head_dim']} is not hidden_size / num_attention_heads")
    return TransformerConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads"), d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"], bias=False, norm="rms", norm_eps=hf["rms_norm_eps"],
        pos="rope", rope_base=hf.get("rope_theta", 10000.0), mlp="swiglu",
        tied_output=hf.get("tie_word_embeddings", False))


def config_from_gguf(meta, tensors):
    """The Hugging Face config keys of a GGUF file's metadata (tied output when it has none)."""
    n_head = meta["llama.attention.head_count"]
    return {"model_type": "llama", "vocab_size": len(meta["tokenizer.ggml.tokens"]),
            "max_position_embeddings": meta["llama.context_length"],
            "num_hidden_layers": meta["llama.block_count"], "num_attention_heads": n_head,
            "num_key_value_heads": meta.get("llama.attention.head_count_kv", n_head),
            "hidden_size": meta["llama.embedding_length"],
            "intermediate_size": meta["llama.feed_forward_length"],
            "rms_norm_eps": meta["llama.attention.layer_norm_rms_epsilon"],
            "rope_theta": meta.get("llama.rope.freq_base", 10000.0),
            "tie_word_embeddings": "lm_head.weight" not in tensors}


def build(cfg):
    return DecoderOnly(cfg)


def names(cfg):
    """{minitx parameter name: [Hugging Face tensor names, concatenated along axis 0]}."""
    table = {"embed.tokens.weight": ["model.embed_tokens.weight"],
             "stack.ln_final.weight": ["model.norm.weight"]}
    if not cfg.tied_output:
        table["embed.output.weight"] = ["lm_head.weight"]
    for i in range(cfg.n_layer):
        for ours, theirs in LAYER.items():
            table[f"stack.blocks.{i}.{ours}"] = [f"model.layers.{i}.{t}" for t in theirs]
    return table
