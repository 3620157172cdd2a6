"""`inspect` of a plain safetensors file (one not written by ckpt-convert, or a single data file of a
folder): its keys, dtypes, shapes and sizes, and its __metadata__, from the header alone."""

from __future__ import annotations

from pathlib import Path

from ..model.dtypes import DTYPE_NAME_BY_CODE
from ..model.sizes import human_bytes

SUFFIX = ".safetensors"


def is_safetensors_file(path: Path) -> bool:
    """A file named *.safetensors whose first bytes read as a safetensors header length + JSON object."""
    if path.suffix != SUFFIX or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def render_safetensors(path: Path, max_items: int) -> str:
    """The header, checked as the loader checks it (entries inside the data area, no overlap, exact sizes)."""
    from ..sidecar.safetensors_file import SafetensorsFile  # torch-free; validates every entry first

    file = SafetensorsFile(path)
    try:
        total = sum(e.nbytes for e in file.entries.values())
        lines = [f"safetensors file: {path.name} ({human_bytes(path.stat().st_size)}), "
                 f"{len(file.entries)} tensor{'' if len(file.entries) == 1 else 's'}, {human_bytes(total)}"]
        metadata = file.metadata or {}
        lines.append("metadata:" if metadata else "metadata: none")
        lines += [f"  {key}: {value!r:.200}" for key, value in sorted(metadata.items())]
        lines.append("tensors:")
        for i, (key, e) in enumerate(sorted(file.entries.items())):
            if i == max_items:
                lines.append(f"  … {len(file.entries) - max_items} more")
                break
            lines.append(f"  {key}: {DTYPE_NAME_BY_CODE.get(e.code, e.code)} {list(e.shape)} {human_bytes(e.nbytes)}")
        return "\n".join(lines)
    finally:
        file.close()
