"""Evaluation metrics of the papers (DreamVideo's script, VBench), offline.

* :mod:`.definitions` - the math on embeddings / frames (CLIP-T, CLIP-I, DINO-I, T-Cons,
  VBench subject/background consistency, temporal flickering, dynamic degree, motion smoothness);
* :mod:`.encoders` - CLIP, DINO and RAFT wrappers loaded from local files only;
* :mod:`.interpolation` - frame interpolators for Motion Smoothness (VBench's AMT-S is not
  available: the default is flow-based and its numbers are not VBench's);
* :mod:`.suite` - :func:`evaluate_video` over any selection of metrics;
* :mod:`.report` - text tables, CSV / JSON files, a plot.

See docs/evaluation.md.
"""
from .definitions import (  # noqa: F401
    DynamicDegreeResult,
    MotionSmoothnessResult,
    clip_t,
    clip_t_per_frame,
    consecutive_similarity,
    cosine_matrix,
    dynamic_degree,
    dynamic_degree_params,
    dynamic_degree_sampling,
    flicker_pair_mae,
    image_alignment,
    image_alignment_matrix,
    is_moving,
    motion_smoothness,
    temporal_consistency,
    temporal_flickering,
    top_flow_magnitude,
    vbench_consistency,
    vbench_consistency_per_frame,
)
from .encoders import (  # noqa: F401
    DEFAULT_NAMES,
    RAFT_FILES,
    ClipEncoder,
    DinoEncoder,
    ImagePreprocess,
    RaftFlow,
    default_search_dirs,
    locate,
)
from .interpolation import FlowInterpolator, LinearBlendInterpolator, backward_warp  # noqa: F401
from .report import (  # noqa: F401
    batch_csv_text,
    batch_rows,
    format_batch_table,
    format_table,
    plot_result,
    write_batch_csv,
    write_json,
)
from .suite import METRICS, MOTION_SMOOTHNESS_NOTE, EncoderSet, evaluate_video, parse_metrics  # noqa: F401
