"""What a loader trusts: which keys or certificate roots may have signed a folder, and whether unsigned is fine."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrustPolicy:
    """Accepted signers of checkpoint folders.

    A folder is trusted if its `model.sig` verifies against any one of `public_keys` (PEM elliptic-curve
    public keys, for folders signed with a private key) or chains to any one of `certificate_roots`
    (PEM certificates, for folders signed with a signing certificate), and every file of the folder
    is exactly as signed.

    Args:
        public_keys: paths of accepted public keys (pin these: ship them with the service, not with the model).
        certificate_roots: paths of accepted root (or intermediate) certificates.
        allow_unsigned: accept folders without `model.sig` (a folder WITH one must still verify).
    """

    public_keys: tuple[Path, ...] = field(default=())
    certificate_roots: tuple[Path, ...] = field(default=())
    allow_unsigned: bool = False

    def __post_init__(self) -> None:
        for name in ("public_keys", "certificate_roots"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):  # one path given where a sequence is expected
                value = (value,)
            object.__setattr__(self, name, tuple(Path(p) for p in value))
        if not self.public_keys and not self.certificate_roots and not self.allow_unsigned:
            raise ValueError("TrustPolicy needs public_keys or certificate_roots (or allow_unsigned=True)")
