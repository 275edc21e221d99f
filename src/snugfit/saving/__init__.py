"""Saving: training checkpoints, model folders for prediction, ONNX export; atomic writes
and disk faults (`snugfit.saving.disk`: a failed write as one `WriteError` line).

Owns every file format snugfit writes and reads back (safetensors + JSON, no
pickle). May import ``snugfit.errors``, ``snugfit.models`` (to rebuild a saved
architecture), ``snugfit.tasks`` (a saved task's fields), torch, safetensors and
onnx; nothing that trains.
"""

from snugfit.saving.atomic import atomic_write, dedupe_storage
from snugfit.saving.checkpoint import (
    TrainingState,
    load_training_state,
    read_checkpoint,
    read_position,
    write_checkpoint,
)
from snugfit.saving.model_files import (
    META_FILE,
    WEIGHTS_FILE,
    model_folder,
    read_model_folder,
    write_model_folder,
)
from snugfit.saving.onnx import OnnxExport, export_onnx

__all__ = [
    "META_FILE",
    "WEIGHTS_FILE",
    "OnnxExport",
    "TrainingState",
    "atomic_write",
    "dedupe_storage",
    "export_onnx",
    "load_training_state",
    "model_folder",
    "read_checkpoint",
    "read_model_folder",
    "read_position",
    "write_checkpoint",
    "write_model_folder",
]
