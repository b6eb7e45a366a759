"""The tokenizers of published models, run by the `tokenizers` library, and their chat templates.

Two sources describe the same kind of tokenizer: a `tokenizer.json` (Hugging Face's own format,
WordPiece for BERT) and the vocabulary, merges and token types stored in a GGUF file (byte-level
BPE, Sennrich et al. 2016 as GPT-2 runs it), from which the equivalent tokenizer is rebuilt. A chat
template is a Jinja template that lays a conversation out as the text the model was tuned on.
"""
import numpy

GGUF_CONTROL = 3  # llama.cpp's token type of special tokens (<|im_start|>, <|endoftext|> ...)


class PretrainedTokenizer:
    """encode / decode like minitx's own tokenizers, plus batches with padding and chat prompts.

    tokenizer: a `tokenizers.Tokenizer`; chat_template: Jinja source or None; eos: the id that
    ends a reply (None when the model has none).
    """

    def __init__(self, tokenizer, chat_template=None, eos=None):
        self.tokenizer, self.chat_template, self.eos = tokenizer, chat_template, eos

    @classmethod
    def from_file(cls, path, max_length=None, chat_template=None, eos=None):
        """A tokenizer.json; max_length truncates longer inputs (Sentence-BERT's max_seq_length)."""
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(path)
        tokenizer.no_padding()
        if max_length:
            tokenizer.enable_truncation(max_length)
        return cls(tokenizer, chat_template, eos)

    @classmethod
    def from_gguf(cls, meta):
        """The byte-level BPE tokenizer described by a GGUF file's metadata."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
        if meta.get("tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"GGUF tokenizer {meta.get('tokenizer.ggml.model')!r} is not supported "
                             "(only byte-level BPE, 'gpt2')")
        tokens = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
        tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
        # GPT-2's split into words, numbers, punctuation and spaces; SmolLM's 'smollm' variant
        # first splits numbers into single digits
        split = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if meta.get("tokenizer.ggml.pre") == "smollm":
            split.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(split)
        tokenizer.decoder = decoders.ByteLevel()
        types = meta["tokenizer.ggml.token_type"]
        tokenizer.add_special_tokens([AddedToken(t, special=True)
                                      for t, kind in zip(tokens, types) if kind == GGUF_CONTROL])
        return cls(tokenizer, meta.get("tokenizer.chat_template"), meta.get("tokenizer.ggml.eos_token_id"))

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size()

    def encode(self, text):
        """Token ids of text (with the special tokens the model adds, e.g. BERT's [CLS] ... [SEP])."""
        return self.tokenizer.encode(text).ids

    def decode(self, ids):
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def encode_batch(self, texts):
        """(ids (B, N) int64, mask (B, N) bool True on real tokens), right-padded with id 0."""
        rows = [self.encode(t) for t in texts]
        n = max(len(r) for r in rows)
        ids, mask = numpy.zeros((len(rows), n), numpy.int64), numpy.zeros((len(rows), n), bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, True
        return ids, mask

    def chat(self, messages):
        """The prompt text of a conversation [{"role": "user", "content": ...}, ...], ending where
        the assistant's reply begins."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=True)
