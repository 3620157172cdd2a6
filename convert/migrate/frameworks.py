"""Training-framework checkpoint folders as units: a Hugging Face Trainer `checkpoint-N/`, an Accelerate `save_state` folder.

Such a folder becomes one converted folder with the same layout:

    checkpoint-500/                      checkpoint-500/  (converted)
      model.safetensors                    model.safetensors        copied as it is (already safe)
      config.json, trainer_state.json      config.json, ...         copied as they are
      tokenizer.json, ...                  tokenizer.json, ...
      optimizer.pt                         optimizer.pt/            a converted folder: checkpoint.json + safetensors
      scheduler.pt                         scheduler.pt/            (load_checkpoint(out / "optimizer.pt"))
      rng_state.pth                        rng_state.pth/
      training_args.bin                    training_args.bin/

Accelerate's `optimizer.bin`, `scheduler.bin`, `sampler.bin`, `scaler.pt`, `random_states_0.pkl`,
`custom_checkpoint_0.pkl` (and `pytorch_model.bin` where safe serialization was off) are converted the
same way, and so is every file of every subfolder (DeepSpeed's `global_step500/`): the folder is one unit,
converted by `units.py` (recognised by `discover.framework_of`). A pickle that cannot be converted
fails the whole folder. The folder appears atomically: built beside the destination, renamed into place.
"""

from __future__ import annotations

import os
from typing import Any

from ..discover import ACCELERATE_PICKLES, TRAINER_PICKLES, framework_of  # noqa: F401 (re-exported)
from .units import convert_unit, verify_unit


def convert_framework_folder(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Convert a Trainer/Accelerate checkpoint folder into the new folder `dst` (see `units.convert_unit`)."""
    return convert_unit("framework", src, dst, overwrite=overwrite)


def verify_framework_folder(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Differences between a framework folder and its conversion (see `units.verify_unit`)."""
    return verify_unit("framework", src, dst)
