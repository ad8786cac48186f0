"""The built-in tiny CogVideoX models: random, seeded and built offline in well under a second (``tiny``, ``tiny-5b``,
``tiny-1.5``, ``tiny-1.5-i2v``), with a small word-level tokenizer; and the names of the built-in pretrained ones.
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import DualAdapterError
from ..base import check_device, parse_dtype
from .bundle import DEFAULT_SCHEDULER_CONFIG, CogVideoXBundle


# --------------------------------------------------------------------------------------------
# the built-in tiny model


# Sizes of the tiny variants. All are random, seeded and built offline in well under a second.
# "tiny" mirrors CogVideoX-2B (sincos positions), "tiny-5b" CogVideoX-5B (RoPE),
# "tiny-1.5" CogVideoX1.5-5B (RoPE, patch_size_t=2); "tiny-i2v" CogVideoX-5B-I2V (the image latents joined on the
# channels: in_channels 2 x 4), "tiny-1.5-i2v" CogVideoX1.5-5B-I2V (also the ofs embedding).
TINY_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(use_rotary_positional_embeddings=False, patch_size_t=None),
    "tiny-5b": dict(use_rotary_positional_embeddings=True, patch_size_t=None),
    "tiny-1.5": dict(use_rotary_positional_embeddings=True, patch_size_t=2),
    "tiny-i2v": dict(use_rotary_positional_embeddings=True, patch_size_t=None, in_channels=8),
    "tiny-1.5-i2v": dict(use_rotary_positional_embeddings=True, patch_size_t=2, in_channels=8, ofs_embed_dim=32),
}

_TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
    up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
    layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
)


def _tiny_transformer_config(variant: str, num_layers: int = 4) -> dict[str, Any]:
    return {**dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
                   text_embed_dim=32, num_layers=num_layers, sample_width=12, sample_height=8, sample_frames=9,
                   patch_size=2, temporal_compression_ratio=4, max_text_seq_length=16), **TINY_VARIANTS[variant]}

# Built-in *pretrained* models shipped in the package (CPU-sized): name -> description.
BUILTIN_PRETRAINED: dict[str, str] = {
    "mini": "pretrained miniature CogVideoX of the sprite world (docs/miniworld.md); 9 x 32 x 32",
}
BUILTIN_MODELS = tuple(TINY_VARIANTS) + tuple(BUILTIN_PRETRAINED)


_TINY_CORPUS = [
    "dog * is playing guitar",
    "a person is playing guitar",
    "a car is turning on a road",
    "a photo of a dog * sitting on the grass",
    "a cat, a plush toy, a person, a car, a dog, a bear, a horse, a bird",
    "walking running jumping dancing swimming riding turning spinning waving",
    "in the park, on the beach, in a city street, at night, in the snow, under the sea",
    "high quality, cinematic, detailed, realistic, blurry, low quality, distorted",
]


def build_tiny_tokenizer(vocab_size: int = 384):
    """A T5-style tokenizer built offline with the ``tokenizers`` library (no download).

    Metaspace pre-tokenizer and BPE trained on a fixed English corpus, ``<pad>`` = 0, ``</s>`` = 1,
    ``<unk>`` = 2 as in T5, ``</s>`` appended to every sequence. Deterministic.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = [chr(c) for c in range(32, 127)] + ["\u2581"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny(variant: str = "tiny", seed: int = 0, device: str = "cpu", dtype: str | torch.dtype = "fp32",
               num_layers: int = 4) -> CogVideoXBundle:
    """Build a tiny random CogVideoX (transformer, VAE, T5, tokenizer), fully offline and seeded.

    Default video size: 9 frames x 64 x 96 px (latent 3 x 8 x 12, 4 channels), text length 16,
    transformer width D = 64 (4 heads x 16), ``num_layers`` blocks, time-embedding width 32.
    Same ``seed`` -> bit-identical weights.

    Raises:
        DualAdapterError: unknown ``variant`` (see :data:`TINY_VARIANTS`).
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    if variant not in TINY_VARIANTS:
        raise DualAdapterError(f"tiny variant {variant!r} is not one of {sorted(TINY_VARIANTS)}")
    device = check_device(device) or "cpu"
    from ...threads import small_model_threads

    small_model_threads(device)  # one CPU thread unless the user chose a count (docs/results/demo.md)
    tokenizer = build_tiny_tokenizer()
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, dropout_rate=0.0)
        ).eval()
        torch.manual_seed(seed + 1)
        transformer = CogVideoXTransformer3DModel(**_tiny_transformer_config(variant, num_layers)).eval()
        torch.manual_seed(seed + 2)
        vae = AutoencoderKLCogVideoX(**_TINY_VAE).eval()
    for m in (text_encoder, transformer, vae):
        m.requires_grad_(False)
    dt = parse_dtype(dtype)
    for m in (transformer, vae, text_encoder):
        m.to(device=device) if dt == torch.float32 else m.to(device=device, dtype=dt)
    return CogVideoXBundle(transformer, vae, text_encoder, tokenizer, dict(DEFAULT_SCHEDULER_CONFIG),
                           name=variant, device=device, dtype=dt)
