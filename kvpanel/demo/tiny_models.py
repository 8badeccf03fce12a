"""Tiny Llama and gpt-oss checkpoints with random weights, written on demand.

The model hub is out of reach in CI and on air-gapped machines, so kvpanel ships the configs and
generates the weights locally. Weights are random but seeded (reproducible), and large enough in
magnitude that outputs depend on the KV: vLLM's ``load_format="dummy"`` weights are so small that
a wrong KV load would go unnoticed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

VOCAB = 32000

LLAMA_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

GPT_OSS_CONFIG: dict[str, Any] = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "hidden_size": 256,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "experts_per_token": 2,
    "vocab_size": VOCAB,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"],
    "rope_theta": 150000.0,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 4.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "original_max_position_embeddings": 1024,
        "truncate": False,
    },
    "attention_bias": True,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}

CONFIGS = {"llama": LLAMA_CONFIG, "gpt-oss": GPT_OSS_CONFIG}


def write_word_tokenizer(out_dir: Path, vocab_size: int = VOCAB) -> None:
    """A word-level tokenizer for the demo, built locally (no hub): the numbers 0..9999, a few
    English words (LMCache's documents are "{i} hi hi ..."), then filler words up to the model's
    vocabulary, so text in and text out both work through the OpenAI API."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    specials = ["<unk>", "<s>", "</s>"]
    words = ["hi", "hello", "the", "a", "is", "of", "and", "to", "in", "what", "document"]
    numbers = [str(i) for i in range(10000)]
    vocab_list = specials + words + numbers
    vocab_list += [f"w{i}" for i in range(vocab_size - len(vocab_list))]
    vocab = {w: i for i, w in enumerate(vocab_list)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": 4096,
                "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}",
            }
        )
    )


def default_models_dir() -> Path:
    base = os.environ.get("KVPANEL_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kvpanel"
    )
    return Path(base) / "models"


def write_tiny_model(
    out_dir: str | Path, kind: str = "llama", seed: int = 0, overrides: dict[str, Any] | None = None
) -> Path:
    """Write config.json + random safetensors weights for a tiny model; return its directory.

    Idempotent: an existing complete checkout (config and weights present) is reused.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if kind not in CONFIGS:
        raise ValueError(f"unknown tiny model {kind!r}; choose one of {sorted(CONFIGS)}")
    out = Path(out_dir)
    cfg_dict = dict(CONFIGS[kind], **(overrides or {}))
    marker = out / ".kvpanel-complete"
    stamp = {"config": cfg_dict, "seed": seed, "format": 2}  # 2: with a tokenizer
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    cfg_path.write_text(json.dumps(cfg_dict, indent=2))
    config = AutoConfig.from_pretrained(str(out))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    # from_config initialises with std 0.02: enough for logits to depend on every KV entry.
    model.save_pretrained(str(out), safe_serialization=True)
    cfg_path.write_text(json.dumps(cfg_dict, indent=2))  # keep our exact config on disk
    write_word_tokenizer(out, cfg_dict["vocab_size"])
    marker.write_text(json.dumps(stamp))
    return out


def demo_model_dir() -> Path:
    """The embedded demo model (tiny Llama), generated on first use."""
    return write_tiny_model(default_models_dir() / "tiny-llama-demo", "llama", seed=0)
