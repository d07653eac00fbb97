"""Model merging (stage 3 of the Qwen3 recipe): slerp and linear, tensor by tensor."""

from embedforge.merging.merge import (
    MergeMethod,
    MergeResult,
    merge_checkpoints,
    merge_state_dicts,
    merge_tensors,
)
from embedforge.merging.output import MergeError
from embedforge.merging.safetensors_io import CorruptCheckpointError
from embedforge.merging.slerp import lerp, slerp

__all__ = [
    "CorruptCheckpointError",
    "MergeError",
    "MergeMethod",
    "MergeResult",
    "lerp",
    "merge_checkpoints",
    "merge_state_dicts",
    "merge_tensors",
    "slerp",
]
