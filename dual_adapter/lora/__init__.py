"""LoRA for every backbone: specs, peft injection, ONE file type, file layouts, ONE model patch, the trainer.

docs/tap.md, docs/file_formats.md. TAP (Temporal Attention Purification, paper) trains a motion LoRA that
reshapes attention only and never the Value projection, so the pretrained values are re-organised into the new
motion. CogVideoX attends jointly over space and time, so on that backbone TAP is a LoRA on ``attn1.to_q`` and
``attn1.to_k`` of every block (preset ``tap``). Other presets: ``k_out`` (the authors' released code: ``to_k`` and
``to_out.0``) and ``full`` (q, k, v, out: the plain LoRA baseline). The U-Net TAP recipe (temporal attentions,
MotionDirector training, AH) is :mod:`dual_adapter.unet_motion`, on the same files and patch.

Modules, lowest first:
  * :mod:`.spec`: :data:`PRESETS`, :class:`LoraSpec`, :func:`parse_blocks`, :func:`resolve_targets` -> peft
    ``LoraConfig``;
  * :mod:`.inject`: :func:`inject_lora` (peft layers on a weight-sharing copy), strengths, :func:`lora_state_dict`;
  * :mod:`.formats`: pure dict -> dict converters per layout (diffusers / peft, kohya / musubi, ComfyUI native;
    CogVideoX and Wan name tables);
  * :mod:`.file`: :class:`LoraFile`, :func:`load_lora`, :func:`save_lora`, :func:`check_compatible` for DiT and
    U-Net backbones alike (what differs is asked of the backbone: its layers and key prefix);
  * :mod:`.patch`: :class:`LoraPatch` (a ``patches.ModelPatch`` with a strength; several stack);
  * :mod:`.train`: :func:`train_lora` / :func:`train_lora_on_latents` on the shared loop.
"""
from __future__ import annotations

from .file import LORA_FORMAT, SAVE_LAYOUTS, UNET_LORA_FORMAT, LoraFile, base_config, check_compatible, load_lora, \
    lora_metadata, save_lora, save_lora_as, save_lora_native, with_alpha
from .inject import _adapter_names as _adapter_names  # the adapters on a model (tests)
from .inject import inject_lora, lora_modules, lora_state_dict, set_lora_strength
from .patch import LoraPatch, parse_lora_arg
from .spec import PRESETS, LoraSpec, lora_config, parse_blocks, preset_name, resolve_targets
from .train import debiased_error, lora_train_config, spatial_checkpoint_path, train_lora, train_lora_on_latents, \
    train_state_path

__all__ = [
    "parse_blocks",
    "PRESETS",
    "LoraSpec",
    "LoraFile",
    "LoraPatch",
    "resolve_targets",
    "preset_name",
    "lora_config",
    "inject_lora",
    "lora_modules",
    "lora_state_dict",
    "lora_metadata",
    "save_lora",
    "save_lora_as",
    "save_lora_native",
    "with_alpha",
    "load_lora",
    "check_compatible",
    "parse_lora_arg",
    "lora_train_config",
    "debiased_error",
    "train_lora",
    "train_lora_on_latents",
    "train_state_path",
    "spatial_checkpoint_path",
    "set_lora_strength",
    "base_config",
    "LORA_FORMAT",
    "UNET_LORA_FORMAT",
    "SAVE_LAYOUTS",
]
