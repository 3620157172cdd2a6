"""Signing as part of writing: the signer a conversion/save in this context applies to its finished folder.

The writer (`write.folder.build_folder`) calls `sign_finished` on the complete temporary folder,
after checkpoint.json and before the atomic rename, so a folder at its destination is signed from
its first instant and a run killed while signing leaves no folder there. A context variable rather
than a parameter threaded through every writer (convert, DCP, Hugging Face and framework folders,
save_checkpoint): every path that builds a folder signs it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from .library import model_signing
from .sign import sign_folder


@dataclass(frozen=True)
class Signer:
    """How to sign folders as they are written: a private key, optionally with a signing certificate."""

    private_key: Path
    signing_certificate: Path | None = None
    certificate_chain: tuple[Path, ...] = field(default=())
    password: str | None = None

    def __call__(self, folder: Path) -> None:
        sign_folder(folder, private_key=self.private_key, signing_certificate=self.signing_certificate,
                    certificate_chain=self.certificate_chain, password=self.password)


_ACTIVE: ContextVar[Signer | None] = ContextVar("ckpt_convert_signer", default=None)


def as_signer(sign: Signer | str | os.PathLike | None) -> Signer | None:
    """`sign=` as the API takes it: a Signer, a private key's path, or None (no signing)."""
    if sign is None or isinstance(sign, Signer):
        return sign
    return Signer(Path(sign))


@contextlib.contextmanager
def signing(sign: Signer | str | os.PathLike | None) -> Iterator[None]:
    """Within the block, every folder written (in this thread) is signed by `sign` (None: unchanged)."""
    signer = check_signer(sign)
    if signer is None:
        yield
        return
    token = _ACTIVE.set(signer)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def check_signer(sign: Signer | str | os.PathLike | None) -> Signer | None:
    """`as_signer(sign)`, checked before any work: model-signing installed, key and certificates readable."""
    signer = as_signer(sign)
    if signer is not None:
        model_signing()
        _check_readable(signer.private_key, signer.signing_certificate, *signer.certificate_chain)
    return signer


def sign_finished(folder: Path) -> None:
    """Sign the finished folder if a signer is active (the writer's hook)."""
    signer = _ACTIVE.get()
    if signer is not None:
        signer(folder)


def _check_readable(*paths: Path | None) -> None:
    """Fail before converting, not after: a missing key would otherwise surface only at the end."""
    from ..errors import ConvertError

    for path in paths:
        if path is not None and not os.path.isfile(path):
            raise ConvertError(f"cannot sign: {path} is not a readable file")


__all__ = ["Signer", "as_signer", "check_signer", "sign_finished", "signing"]
