"""The bottom layer: safe checkpoint I/O, atomic writes, images, typed config files, and the ADM ``.npz``
layout (:mod:`anyorder.io.npz`)."""

from anyorder.io.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    check_state_dict,
    load_state_dict,
    save_state_dict,
)
from anyorder.io.config import apply_overrides, config_from_dict, config_to_dict, read_config_file
from anyorder.io.seeds import check_seed

__all__ = ["CheckpointError", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "check_state_dict",
           "load_state_dict", "save_state_dict", "apply_overrides", "config_from_dict", "config_to_dict",
           "read_config_file", "check_seed"]
