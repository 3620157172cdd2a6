"""A live storage on a device (CUDA, ...) as an entry source: copied to the file through a bounded host buffer.

The writer asks for the bytes when it writes the file; they come over in chunks of at most
`chunk_bytes` through one pinned host buffer (for CUDA), so saving a model on the GPU never needs a
host copy of the whole model, nor of one whole storage. The one exception is a strided (non-contiguous)
view stored under a state-dict key, whose gather needs its storage on the host at once (`to_host`);
state dicts and optimizer states hold contiguous tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..model.chunked import ChunkedSource

CHUNK_BYTES = 64 << 20


class DeviceStorage(ChunkedSource):
    """The bytes of an untyped storage on a non-CPU device.

    Args:
        storage: the storage (kept alive by this object).
        chunk_bytes: the size of the host staging buffer.
    """

    def __init__(self, storage: torch.UntypedStorage, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.storage = storage
        self.nbytes = storage.nbytes()
        self.chunk_bytes = chunk_bytes

    def _device_bytes(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8, device=self.storage.device).set_(self.storage, 0, (self.nbytes,), (1,))

    def chunks(self, offset: int, nbytes: int) -> Iterator[memoryview]:
        if not 0 <= offset <= offset + nbytes <= self.nbytes:
            raise ValueError(f"bytes [{offset}, {offset + nbytes}) are outside a storage of {self.nbytes} bytes")
        if nbytes == 0:
            return
        source = self._device_bytes()
        pinned = source.device.type == "cuda"  # page-locked: the copy is one DMA, no bounce through pageable memory
        host = torch.empty(min(self.chunk_bytes, nbytes), dtype=torch.uint8, pin_memory=pinned)
        host_bytes = host.numpy()
        for start in range(offset, offset + nbytes, self.chunk_bytes):
            n = min(self.chunk_bytes, offset + nbytes - start)
            host[:n].copy_(source[start:start + n])  # synchronous: the chunk is on the host when this returns
            yield memoryview(host_bytes[:n])

    def to_host(self, offset: int, nbytes: int) -> memoryview:
        return memoryview(self._device_bytes()[offset:offset + nbytes].cpu().numpy())
