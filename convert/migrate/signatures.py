"""`migrate --sign-key` over outputs an earlier run converted: each is signed unless the key's signature is there.

The journal records, per output, which key signed it (`signature`: the sha256 of the key's public half)
and the signature file's size and mtime. A re-run with the same key skips an output whose record still
matches its `model.sig`; any other up-to-date output is a sign-only job: its folder's digests are checked
(a damaged output is not signed: it fails and is converted again), its `model.sig` is verified against the
key's public half, and only if that fails is it signed, with the code `ckpt-convert sign` uses
(`sign.sign_folder`: `.model.sig.partial`, fsync, rename, so a killed signing keeps no half signature).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConvertError, SignatureInvalid, UnsignedFolder, failure_reason
from ..ops.convert import sidecars_under
from ..ops.verify import verify_folder
from ..sign.policy import TrustPolicy
from ..sign.sign import PARTIAL_NAME, SIGNATURE_NAME, sign_folder
from ..sign.verify import verify_signature
from .walker import Job

__all__ = ["PARTIAL_NAME", "key_id", "sign_earlier_output", "signature_current", "signature_record"]


def _public_pem(private_key: str | os.PathLike) -> bytes:
    """The PEM public half of the PEM private key `private_key` (unencrypted: migrate takes no password)."""
    from cryptography.hazmat.primitives import serialization  # model-signing's dependency: there with it

    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConvertError(f"cannot sign: {private_key} is not an unencrypted PEM private key "
                           f"({' '.join(str(exc).split()) or type(exc).__name__})") from None
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(private_key: str | os.PathLike) -> str:
    """What the journal records as the signer: the sha256 of the key's public half (PEM)."""
    return hashlib.sha256(_public_pem(private_key)).hexdigest()


def signature_record(folder: Path, key: str) -> dict[str, Any] | None:
    """`{"key", "size", "mtime_ns"}` of `folder/model.sig` as signed by `key` (a `key_id`), None if it is missing."""
    try:
        st = os.lstat(folder / SIGNATURE_NAME)
    except OSError:
        return None
    return {"key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def signature_current(folder: Path, record: Any, key: str) -> bool:
    """Whether the journal's `record` says `key` signed `folder` and its model.sig is the file recorded then."""
    return isinstance(record, dict) and record.get("key") == key and signature_record(folder, key) == record


def signed_by(folder: Path, private_key: str | os.PathLike) -> bool:
    """Whether `folder`'s model.sig verifies with the public half of `private_key` (every file as signed)."""
    if not os.path.lexists(folder / SIGNATURE_NAME):
        return False
    with tempfile.TemporaryDirectory(prefix="ckpt-convert-key-") as tmp:
        public = Path(tmp) / "key.pub"
        public.write_bytes(_public_pem(private_key))
        try:
            verify_signature(folder, TrustPolicy(public_keys=(public,)))
        except (SignatureInvalid, UnsignedFolder):
            return False
    return True


def ensure_signed(folder: Path, private_key: str | os.PathLike) -> bool:
    """Sign `folder` unless it is already signed by `private_key`; True if it was signed now.

    Raises:
        ConvertError: the folder's own digests do not check out (it is not signed), or it cannot be signed.
    """
    problems = [p for rel, _ in sidecars_under(folder) for p in verify_folder(folder / rel).problems]
    if problems:
        raise ConvertError(f"{folder} is damaged, so it is not signed: {problems[0]}")
    if signed_by(folder, private_key):
        return False
    sign_folder(folder, private_key=private_key)
    return True


def sign_earlier_output(job: Job, dst_root: str, private_key: str) -> dict[str, Any]:
    """The sign-only job of an up-to-date output (`job.sign_only`); never raises: the outcome is in the entry."""
    out = Path(dst_root) / job.output_rel
    entry: dict[str, Any] = {"kind": job.kind, "output": job.output_rel, "bytes": job.size}
    try:
        entry["signed_now"] = ensure_signed(out, private_key)
        entry.update(status="skipped", signature=signature_record(out, key_id(private_key)))
    except ConvertError as exc:
        entry.update(status="failed", reason=f"{exc.label}: {exc}")
    except Exception as exc:  # memory, the environment or a bug: must not stop the whole migration
        entry.update(status="failed", reason=failure_reason(exc))
    return entry
