"""Typed JSON (the sidecar's `root`) → Python values: the decoding half of convert/codec.py."""

from __future__ import annotations

from ..codec import DECODE_MAX_DEPTH as MAX_DEPTH
from ..codec import Decoder

__all__ = ["MAX_DEPTH", "Decoder"]
