"""A random CLIPSeg saved as `save_pretrained` writes it, made offline (no download): a byte-level tokenizer with no
merges (every byte is a token), a ViT image processor at CLIPSeg's 352 px with ImageNet normalisation, and either a
tiny two-layer model (tests of the prompt detector and of weights resolution) or one of CIDAS/clipseg-rd64-refined's
size (the detection cost in bench/detectcost.py: the cost does not depend on the weights' values)."""

from __future__ import annotations

import json
import os


def save_clipseg(folder: str, seed: int = 0, full_size: bool = False) -> str:
    """Write a random CLIPSeg (tiny, or the default CLIPSegConfig's size when full_size) with its processor into
    `folder`; returns `folder`."""
    import torch
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor)
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.makedirs(folder, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    images = ViTImageProcessor(size={"height": 352, "width": 352}, image_mean=[0.485, 0.456, 0.406],
                               image_std=[0.229, 0.224, 0.225])
    if full_size:  # CIDAS/clipseg-rd64-refined's shape: the defaults, reduce_dim 64, the refined decoder
        config = CLIPSegConfig(reduce_dim=64, use_complex_transposed_convolution=True)
        config.text_config.vocab_size = max(config.text_config.vocab_size, len(vocab))
    else:
        config = CLIPSegConfig(
            text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
                         # the text's embedding is read at the end token: ids of this vocabulary, not CLIP's
                         "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                         "pad_token_id": vocab["<|endoftext|>"]},
            vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "image_size": 352, "patch_size": 16},
            projection_dim=32, reduce_dim=16, extract_layers=[0, 1])
    torch.manual_seed(seed)
    CLIPSegForImageSegmentation(config).eval().save_pretrained(folder)
    CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder
