"""BERT-style encoders (Devlin et al. 2018) in the Hugging Face layout, as a minitx EncoderOnly.

A BERT layer is minitx's post-LN Block: x = LN(x + attention(x)); x = LN(x + MLP(x)) with the
exact GELU. The embeddings are token + position + segment, then a LayerNorm.
"""
from ..nn import EncoderOnly, TransformerConfig

IGNORED = ("embeddings.position_ids", "pooler.")  # a constant buffer; the [CLS] head, unused here
LAYER = {  # minitx name in Block -> Hugging Face names (k and v are one Linear in minitx)
    "attn.q": ["attention.self.query"],
    "attn.kv": ["attention.self.key", "attention.self.value"],
    "attn.out": ["attention.output.dense"],
    "ln_attn": ["attention.output.LayerNorm"],
    "mlp.up": ["intermediate.dense"],
    "mlp.down": ["output.dense"],
    "ln_mlp": ["output.LayerNorm"],
}


def config(hf, pool_config=None):
    """A TransformerConfig from a Hugging Face BERT config.json (a dict)."""
    if hf.get("model_type") != "bert":
        raise ValueError(f"config.json: model_type {hf.get('model_type')!r} is not 'bert'")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported (only 'gelu')")
    return TransformerConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"], norm="layer", norm_eps=hf["layer_norm_eps"], norm_first=False,
        pos="learned", mlp="gelu", gelu="none", n_token_types=hf["type_vocab_size"], embed_norm=True)


def build(cfg, pool):
    return EncoderOnly(cfg, n_classes=None, pool=pool)


def names(cfg):
    """{minitx parameter name: [Hugging Face tensor names, concatenated along axis 0]}."""
    table = {"embed.tokens.weight": ["embeddings.word_embeddings.weight"],
             "embed.positions.table.weight": ["embeddings.position_embeddings.weight"],
             "embed.token_types.weight": ["embeddings.token_type_embeddings.weight"],
             "embed.norm.weight": ["embeddings.LayerNorm.weight"],
             "embed.norm.bias": ["embeddings.LayerNorm.bias"]}
    for i in range(cfg.n_layer):
        for ours, theirs in LAYER.items():
            for kind in ("weight", "bias"):
                table[f"stack.blocks.{i}.{ours}.{kind}"] = [f"encoder.layer.{i}.{t}.{kind}" for t in theirs]
    return table
