"""The loader's safetensors file: the torch-free checked header and mapping (convert/sidecar/safetensors_file.py)
with its entries handed out as zero-copy torch tensors over the private mapping."""

from __future__ import annotations

import torch

from ..errors import MalformedCheckpoint
from ..model.torch_values import torch_dtype_for_code
from ..sidecar.safetensors_file import MAX_HEADER, EntryInfo
from ..sidecar.safetensors_file import SafetensorsFile as _Header

__all__ = ["MAX_HEADER", "EntryInfo", "SafetensorsFile"]


class SafetensorsFile(_Header):
    """One validated safetensors file, mapped privately; entries as tensors."""

    def raw(self, key: str) -> torch.Tensor:
        """The entry's bytes as a flat uint8 tensor sharing the private mapping (no copy)."""
        entry = self.entries.get(key)
        if entry is None:
            raise MalformedCheckpoint(f"{self.path.name} has no entry {key!r:.80}")
        if entry.nbytes == 0:
            return torch.empty(0, dtype=torch.uint8)
        # the private (copy-on-write) mapping is writable, so frombuffer has nothing to warn about
        return torch.frombuffer(self.map, dtype=torch.uint8, offset=entry.start, count=entry.nbytes)

    def tensor(self, key: str) -> torch.Tensor:
        """The entry as safetensors describes it (its stored dtype and shape)."""
        entry = self.entries[key]
        raw = self.raw(key)
        dtype = torch_dtype_for_code(entry.code)
        return (raw.view(dtype) if entry.nbytes else torch.empty(0, dtype=dtype)).reshape(entry.shape)
