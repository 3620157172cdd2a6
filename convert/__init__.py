"""ckpt-convert: pickled PyTorch checkpoints → safetensors + a JSON sidecar, without running them.

    >>> from convert import convert_checkpoint, load_checkpoint           # doctest: +SKIP
    >>> convert_checkpoint("old/checkpoint.pth", "new/checkpoint")         # doctest: +SKIP
    >>> ck = load_checkpoint("new/checkpoint", map_location="cpu")         # doctest: +SKIP
    >>> save_checkpoint({"model": model.state_dict()}, "ckpts/step100")    # doctest: +SKIP
"""

from ._version import __version__
from .api import ConversionReport, ScanReport, convert_checkpoint, read_checkpoint, scan_checkpoint, verify_checkpoint
from .errors import ConvertError, MalformedCheckpoint, OutputExists, UnsafeCheckpoint, UnsupportedValue
from .export import ExportReport, export_weights
from .model.records import GlobalRef, ObjectRecord
from .ops.verify import verify_folder

# Torch-side entry points are imported on first use, so `scan` and `convert` work without torch installed.
_LAZY = {"compare_trees": ".ops.compare", "load_checkpoint": ".load", "save_checkpoint": ".ops.save", "SaveReport": ".ops.save",
         "TrustPolicy": ".sign"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ConversionReport",
    "ConvertError",
    "ExportReport",
    "GlobalRef",
    "MalformedCheckpoint",
    "ObjectRecord",
    "OutputExists",
    "SaveReport",
    "ScanReport",
    "TrustPolicy",
    "UnsafeCheckpoint",
    "UnsupportedValue",
    "__version__",
    "compare_trees",
    "convert_checkpoint",
    "export_weights",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "scan_checkpoint",
    "verify_checkpoint",
    "verify_folder",
]
