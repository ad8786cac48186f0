"""DualReal: joint identity + motion adapters with the StageBlender controller (docs/dualreal.md).

Public API:
    DualRealConfig, DualRealAdapters, Adapter, DABlockAdapters   (adapters.py: DA-block adapters)
    StageBlender, block_groups, group_ranges                     (controller.py)
    DualRealPatch, DABlock, DualRealContext, check_compatible    (patch.py: the model patch)
    DualRealOptions, DualRealData, DualRealResult,
    prepare_dualreal_data, train_dualreal, train_dualreal_on_data, run_paths  (trainer.py)
    DualRealAdapterSet (the DUALREAL_ADAPTERS payload), save_adapters, load_adapters,
    import_official, load_any                                    (checkpoint.py)
    stageblender_readout, plot_stageblender                      (readout.py)
"""
from .adapters import (ADAPTER_NAMES, FORMS, IDENTITY_ADAPTERS, MOTION_ADAPTERS, Adapter, DABlockAdapters,
                       DualRealAdapters, DualRealConfig)
from .checkpoint import DualRealAdapterSet, import_official, load_adapters, load_any, save_adapters
from .controller import StageBlender, block_groups, group_ranges
from .patch import (DABlock, DualRealContext, DualRealPatch, check_compatible, find_context, reference_for_adapters,
                    w_cond_trained)
from .readout import plot_stageblender, stageblender_readout
from .trainer import (CLIP_SAMPLINGS, LATENT_SAMPLINGS, load_motion_clips, DualRealData, DualRealOptions, DualRealResult, prepare_dualreal_data, run_paths, finalize_run,
                      train_dualreal, train_dualreal_on_data)

__all__ = [
    "ADAPTER_NAMES", "FORMS", "IDENTITY_ADAPTERS", "MOTION_ADAPTERS", "Adapter", "DABlockAdapters",
    "DualRealAdapters", "DualRealConfig", "DualRealAdapterSet", "import_official", "load_adapters", "load_any",
    "save_adapters", "StageBlender", "block_groups", "group_ranges", "DABlock", "DualRealContext", "w_cond_trained", "reference_for_adapters",
    "DualRealPatch", "check_compatible", "find_context", "plot_stageblender", "stageblender_readout",
    "CLIP_SAMPLINGS", "LATENT_SAMPLINGS", "load_motion_clips", "DualRealData", "DualRealOptions", "DualRealResult", "prepare_dualreal_data", "run_paths", "finalize_run", "train_dualreal",
    "train_dualreal_on_data",
]
