"""The public API in one place: every operation, re-exported from the layer that implements it."""

from __future__ import annotations

from .errors import ConvertError
from .ops.checkpoint import ConversionReport, convert_checkpoint, read_checkpoint, verify_checkpoint
from .scan import ScanReport, scan_checkpoint

__all__ = ["ConversionReport", "ConvertError", "ScanReport", "convert_checkpoint", "read_checkpoint",
           "scan_checkpoint", "verify_checkpoint"]
