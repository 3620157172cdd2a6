"""Where each loaded storage goes: `map_location` as torch.load takes it.

None restores every storage to the device it was saved on (the sidecar records it: storages' "device",
plain tensors' "default_device"), and fails as torch.load does when that device is absent; a device
(string or torch.device) sends everything there; a dict maps saved locations to targets (others are
restored as saved); a callable(storage, location) is given the CPU storage and the saved location and
returns a storage (or None: restore as saved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..errors import ConvertError, DeviceUnavailable, MalformedCheckpoint

MapLocation = str | torch.device | dict[str, str | torch.device] | Callable[[Any, str], Any] | None


def checked_device(value: object, what: str) -> torch.device:
    """`value` as a torch.device that exists on this machine; DeviceUnavailable if it does not."""
    try:
        device = torch.device(value)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise ConvertError(f"{what} {value!r} is not a device (use 'cpu', 'cuda', 'cuda:0', a torch.device, a dict "
                           "{'cuda:0': 'cpu'} or a callable(storage, location))") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"{what} {value!r}: CUDA is not available on this machine; load on the CPU with "
                                "map_location='cpu' (or {'cuda:0': 'cpu'})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"{what} {value!r}: this machine has {torch.cuda.device_count()} CUDA devices; "
                                f"remap it, e.g. map_location={{{str(device)!r}: 'cuda:0'}}")
    return device


def _saved(location: object) -> str:
    """A saved location from the (untrusted) sidecar, checked to be a short device string."""
    if not isinstance(location, str) or len(location) >= 32:
        raise MalformedCheckpoint(f"checkpoint.json records the device {location!r:.40}, which is not a device")
    return location


class Placement:
    """map_location resolved once per load; `device(location)` for a saved location."""

    def __init__(self, map_location: MapLocation) -> None:
        self.map_location = map_location
        self.fn = map_location if callable(map_location) and not isinstance(map_location, torch.device) else None
        self.table: dict[str, torch.device] = {}
        self.everything: torch.device | None = None
        if isinstance(map_location, dict):
            for key, target in map_location.items():
                self.table[str(key)] = checked_device(target, f"map_location[{key!r}]")
        elif map_location is not None and self.fn is None:
            self.everything = checked_device(map_location, "map_location")
        self.cache: dict[str, torch.device] = {}

    def device(self, location: object) -> torch.device:
        """Where a storage saved on `location` goes (the callable case: where it goes if the callable says None)."""
        location = _saved(location)
        if self.everything is not None:
            return self.everything
        if location not in self.cache:
            target = self.table.get(location)
            self.cache[location] = target if target is not None else checked_device(location, "tensors saved on")
        return self.cache[location]

    def single(self, locations: Iterable[object]) -> torch.device | None:
        """The one device every location goes to (None with a callable, or when they differ)."""
        if self.fn is not None:
            return None
        devices = {self.device(loc) for loc in locations} or {torch.device("cpu")}
        return devices.pop() if len(devices) == 1 else None

    def keeps(self, location: object, device: torch.device) -> bool:
        """Whether a storage saved on `location`, now on `device`, stays there (no callable to ask)."""
        return self.fn is None and self.device(location) == device

    def place(self, raw: torch.Tensor, location: object) -> torch.UntypedStorage:
        """The storage of `raw` (bytes as uint8) where it belongs."""
        if self.fn is not None:
            moved = self.fn(raw.untyped_storage(), _saved(location))
            if moved is not None:
                if isinstance(moved, torch.TypedStorage):
                    moved = moved._untyped_storage  # (.untyped() warns that TypedStorage is deprecated)
                if not isinstance(moved, torch.UntypedStorage):
                    raise ConvertError(f"map_location callable returned {type(moved).__name__}; "
                                       "expected a storage (or None to restore it as saved)")
                return moved
        device = self.device(location) if self.fn is None else checked_device(_saved(location), "tensors saved on")
        return (raw.to(device) if raw.device != device else raw).untyped_storage()
