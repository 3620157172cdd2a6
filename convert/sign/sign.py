"""Sign a folder: `model.sig` inside it, written by model-signing, covering every other file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConvertError
from ..primitives.durable import fsync_dir, fsync_fd
from .library import hashing_config, model_signing

SIGNATURE_NAME = "model.sig"  # model-signing's default name; upstream's CLI leaves the signature file out the same way
PARTIAL_NAME = ".model.sig.partial"  # written first, renamed into place: an interrupted re-sign keeps the old signature


def sign_folder(folder: str | os.PathLike, *, private_key: str | os.PathLike,
                signing_certificate: str | os.PathLike | None = None,
                certificate_chain: Sequence[str | os.PathLike] = (), password: str | None = None) -> Path:
    """Write `FOLDER/model.sig`: the OpenSSF model-signing signature of every file in `folder`.

    Args:
        folder: the folder to sign (a converted folder: checkpoint.json, data files, indexes, copies).
        private_key: PEM elliptic-curve private key (e.g. P-256).
        signing_certificate: with it, sign as this certificate (its key is `private_key`) instead of as a bare key.
        certificate_chain: intermediate certificates to put in the signature with `signing_certificate`.
        password: the private key's password, if it is encrypted.

    Returns:
        The signature's path.

    Raises:
        ConvertError: model-signing is not installed, the key cannot be used, or the folder cannot be
            signed (a symlink in it, for one).
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise ConvertError(f"cannot sign {folder}: not a folder")
    ms = model_signing()
    config = ms.signing.Config()
    partial = folder / PARTIAL_NAME
    try:
        if signing_certificate is not None:
            config.use_certificate_signer(private_key=private_key, signing_certificate=signing_certificate,
                                          certificate_chain=list(certificate_chain))
        else:
            config.use_elliptic_key_signer(private_key=private_key, password=password)
        config.set_hashing_config(hashing_config(ms, SIGNATURE_NAME))
        partial.unlink(missing_ok=True)  # a killed earlier run's; it is not in the folder when hashed
        config.sign(folder, partial)  # hashes first, then writes the signature
        with open(partial, "rb") as f:
            fsync_fd(f.fileno())
        os.replace(partial, folder / SIGNATURE_NAME)
        fsync_dir(folder)
    except ConvertError:
        raise
    except Exception as exc:  # the library's errors (bad key, symlink, unreadable file): one line
        with contextlib.suppress(OSError):
            partial.unlink()
        reason = " ".join(str(exc).split()) or type(exc).__name__
        reason = reason.replace(" This behavior can be changed with `allow_symlinks`.",  # not an option here
                                " (a signed folder holds regular files only)")
        raise ConvertError(f"cannot sign {folder}: {reason}") from None
    return folder / SIGNATURE_NAME
