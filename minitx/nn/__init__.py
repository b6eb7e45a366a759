"""Layers and models: Module/Parameter, the building blocks, attention, and the three architectures."""
from . import functional
from .attention import KVCache, MultiHeadAttention
from .layers import MLP, Dropout, Embedding, LayerNorm, Linear, RMSNorm
from .module import Module, Parameter
from .positions import LearnedPositions, SinusoidalPositions, apply_rope
from .transformer import (Block, DecoderOnly, EncoderDecoder, EncoderDecoderConfig, EncoderOnly,
                          Stack, TransformerConfig, lm_loss)
