"""CustomTTT (Bi et al.; docs/customttt.md): prompt-influence analysis, layer-selective LoRAs, test-time-training
merge, one definition of each for every backbone.

* :mod:`~dual_adapter.customttt.influence`: :func:`prompt_influence` (per block on the DiTs, per text layer on
  the U-Nets);
* :mod:`~dual_adapter.customttt.selective`: the layer-selective LoRAs' specs and training;
* :mod:`~dual_adapter.customttt.merge`: :func:`ttt_merge` written as named steps, :func:`teacher_reference`,
  :func:`merge_loras`;
* :mod:`~dual_adapter.customttt.config`: :class:`TTTConfig`, :class:`TTTResult`;
* :mod:`~dual_adapter.customttt.unet`: the recipe as published on AnimateDiff (its own stage trainers and
  U-Net LoRA files), on the same teacher references and objective.

The backbone supplies what differs (:class:`~dual_adapter.backbones.base.VideoBackbone`: which blocks text
enters and how, the forward process, the clean-latent estimate, the training objective, the sampler).
"""
from __future__ import annotations

from .config import REFERENCE_ALIASES, REFERENCES, SPACES, Callback, TTTConfig, TTTResult
from .influence import InfluenceResult, make_groups, prompt_influence, text_blocks
from .merge import (MergeInputs, TTTObjective, _renoised_loss, build_student, check_merge_inputs, merge_loras,
                    merged_file, predicted_x0, run_ttt, student_mode, teacher_reference, teacher_references,
                    ttt_merge)
from .selective import parse_blocks, selective_spec, selective_train_config, train_selective_lora

__all__ = [
    "InfluenceResult",
    "prompt_influence",
    "make_groups",
    "text_blocks",
    "parse_blocks",
    "selective_spec",
    "selective_train_config",
    "train_selective_lora",
    "TTTConfig",
    "TTTResult",
    "teacher_reference",
    "teacher_references",
    "check_merge_inputs",
    "build_student",
    "TTTObjective",
    "run_ttt",
    "merged_file",
    "MergeInputs",
    "predicted_x0",
    "student_mode",
    "merge_loras",
    "ttt_merge",
    "SPACES",
    "REFERENCES",
    "REFERENCE_ALIASES",
    "Callback",
    "_renoised_loss",
]
