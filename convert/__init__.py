"""ckpt-convert: pickled PyTorch checkpoints → safetensors + a JSON sidecar, without running them.

    >>> from convert import convert_checkpoint, load_checkpoint           # doctest: +SKIP
    >>> convert_checkpoint("old/checkpoint.pth", "new/checkpoint")         # doctest: +SKIP
    >>> ck = load_checkpoint("new/checkpoint", map_location="cpu")         # doctest: +SKIP
    >>> save_checkpoint({"model": model.state_dict()}, "ckpts/step100")    # doctest: +SKIP
"""

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import (
    CannotWrite,
    ConvertError,
    CorruptFolder,
    DestinationBusy,
    DestinationNotOwned,
    DeviceUnavailable,
    MalformedCheckpoint,
    MissingDependency,
    NotACheckpoint,
    OutputExists,
    SignatureInvalid,
    UnsafeCheckpoint,
    UnsignedFolder,
    UnsupportedValue,
)
from .model.records import GlobalRef, ObjectRecord

# The entry points are imported on first use: `python -m convert scan` then loads the reader and the scanner
# only (not the writer, numpy or torch), and `scan`/`convert` work without torch installed.
_LAZY = {
    "ConversionReport": ".api", "ScanReport": ".api", "convert_checkpoint": ".api", "read_checkpoint": ".api",
    "scan_checkpoint": ".api", "verify_checkpoint": ".api",
    "ExportReport": ".export", "export_weights": ".export",
    "verify_folder": ".ops.verify",
    "compare_trees": ".ops.compare", "load_checkpoint": ".load", "save_checkpoint": ".ops.save",
    "SaveReport": ".ops.save", "TrustPolicy": ".sign",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .api import (
        ConversionReport,
        ScanReport,
        convert_checkpoint,
        read_checkpoint,
        scan_checkpoint,
        verify_checkpoint,
    )
    from .export import ExportReport, export_weights
    from .load import load_checkpoint
    from .ops.compare import compare_trees
    from .ops.save import SaveReport, save_checkpoint
    from .ops.verify import verify_folder
    from .sign import TrustPolicy


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        try:
            value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        except ModuleNotFoundError as exc:  # lean install: one line naming what needs torch, when it is used
            if exc.name != "torch":
                raise
            return _needs_torch(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _needs_torch(name: str) -> object:
    def missing(*args: object, **kwargs: object) -> object:
        raise MissingDependency(name) from None

    missing.__name__ = missing.__qualname__ = name
    return missing


__all__ = [
    "CannotWrite",
    "ConversionReport",
    "ConvertError",
    "CorruptFolder",
    "DestinationBusy",
    "DestinationNotOwned",
    "DeviceUnavailable",
    "ExportReport",
    "GlobalRef",
    "MalformedCheckpoint",
    "MissingDependency",
    "NotACheckpoint",
    "ObjectRecord",
    "OutputExists",
    "SaveReport",
    "ScanReport",
    "SignatureInvalid",
    "TrustPolicy",
    "UnsafeCheckpoint",
    "UnsignedFolder",
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
