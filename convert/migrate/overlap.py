"""SRC and DST must not overlap in a way that lets a migration touch its own source.

Rules (symlinks resolved): DST equal to SRC, or SRC inside DST, is refused (DST-side work, such
as removing stale temp folders, would reach into the source). DST inside SRC is allowed: the
walker never enters DST, and everything written or removed is under DST.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConvertError


class OverlappingFolders(ConvertError):
    """SRC and DST overlap in a way migrate refuses."""


def check_overlap(src: Path, dst: Path) -> bool:
    """Raise `OverlappingFolders` if `dst` equals or contains `src`; return whether `dst` lies inside `src`."""
    real_src = Path(os.path.realpath(src))
    real_dst = Path(os.path.realpath(dst))
    if real_src == real_dst:
        raise OverlappingFolders(f"{dst}: the destination is the source folder {src}; choose another folder")
    if real_src.is_relative_to(real_dst):
        raise OverlappingFolders(f"{dst}: the destination contains the source folder {src}; migrate would write "
                                 "and clean up inside its own source: choose a destination outside it")
    return real_dst.is_relative_to(real_src)
