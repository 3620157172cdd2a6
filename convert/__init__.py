"""ckpt-convert: pickled PyTorch checkpoints → safetensors + a JSON sidecar, without running them.

    >>> from convert import convert_checkpoint, load_checkpoint           # doctest: +SKIP
    >>> convert_checkpoint("old/checkpoint.pth", "new/checkpoint")         # doctest: +SKIP
    >>> ck = load_checkpoint("new/checkpoint", map_location="cpu")         # doctest: +SKIP
    >>> save_checkpoint({"model": model.state_dict()}, "ckpts/step100")    # doctest: +SKIP
"""

from ._version import __version__
from .api import ConversionReport, ScanReport, convert_checkpoint, read_checkpoint, scan_checkpoint, verify_checkpoint
from .compare import compare_trees
from .errors import ConvertError, MalformedCheckpoint, OutputExists, UnsafeCheckpoint, UnsupportedValue
from .integrity import verify_folder
from .load import load_checkpoint
from .read.records import GlobalRef, ObjectRecord
from .save import SaveReport, save_checkpoint

__all__ = [
    "ConversionReport",
    "ConvertError",
    "GlobalRef",
    "MalformedCheckpoint",
    "ObjectRecord",
    "OutputExists",
    "SaveReport",
    "ScanReport",
    "UnsafeCheckpoint",
    "UnsupportedValue",
    "__version__",
    "compare_trees",
    "convert_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "scan_checkpoint",
    "verify_checkpoint",
    "verify_folder",
]
