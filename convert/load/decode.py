"""Typed JSON (the sidecar's `root`) → Python values: the decoding half of convert/sidecar/codec.py."""

from __future__ import annotations

from ..sidecar.codec import DECODE_MAX_DEPTH as MAX_DEPTH
from ..sidecar.codec import Decoder

__all__ = ["MAX_DEPTH", "Decoder"]
