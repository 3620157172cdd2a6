"""Check a folder's `model.sig` against a trust policy, with model-signing's own verifier."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from ..errors import ConvertError, MalformedCheckpoint, SignatureInvalid, UnsignedFolder
from ..sidecar.jsonio import strict_json
from .library import hashing_config, model_signing
from .policy import TrustPolicy
from .sign import SIGNATURE_NAME

# model-signing leaves these out of every manifest (and out of the hashing when verifying): a file
# added under these names would pass unnoticed, so a verified folder must have none.
UNSIGNABLE = (".git", ".gitattributes", ".github", ".gitignore")
MAX_SIGNATURE_BYTES = 64 << 20  # a bundle lists ~150 bytes per file; this bounds what the parser is handed


def verify_signature(folder: str | os.PathLike, policy: TrustPolicy) -> None:
    """Check that `folder` is signed by a signer `policy` accepts and that every file is exactly as signed.

    Files changed, added or removed, a signature by another key, a certificate that does not chain to
    an accepted root, a symlink in the folder: all raise SignatureInvalid (one line, the first reason).

    Raises:
        UnsignedFolder: no `model.sig` and not `policy.allow_unsigned`.
        SignatureInvalid: the signature does not verify under `policy`.
        ConvertError: model-signing is not installed.
    """
    folder = Path(folder)
    signature = folder / SIGNATURE_NAME
    if not os.path.lexists(signature):
        if policy.allow_unsigned:
            return
        raise UnsignedFolder(f"{folder} is not signed (no {SIGNATURE_NAME}); sign it with `ckpt-convert sign` "
                             "or pass a trust policy with allow_unsigned=True")
    if signature.is_symlink() or not signature.is_file():
        raise SignatureInvalid(f"{signature} is not a regular file")
    if signature.stat().st_size > MAX_SIGNATURE_BYTES:
        raise SignatureInvalid(f"{signature} is larger than {MAX_SIGNATURE_BYTES >> 20} MiB; no signature is")
    for name in UNSIGNABLE:
        if os.path.lexists(folder / name):
            raise SignatureInvalid(f"{folder / name} is not covered by the signature (model-signing never signs git "
                                   "files); remove it")
    for path in (*policy.public_keys, *policy.certificate_roots):  # the service's own files: exit 2, not "untrusted"
        if not path.is_file():
            raise ConvertError(f"cannot verify {folder}: {path} (a trust-policy key or certificate) is not a readable file")
    ms = model_signing()
    reasons = []
    verifiers = [lambda c, k=key: c.use_elliptic_key_verifier(public_key=k) for key in policy.public_keys]
    verifiers += [lambda c, r=root: c.use_certificate_verifier(certificate_chain=[r]) for root in policy.certificate_roots]
    for use in verifiers:
        config = use(ms.verifying.Config()).set_hashing_config(hashing_config(ms, SIGNATURE_NAME))
        try:
            config.verify(folder, signature)
        except Exception as exc:  # the library raises ValueError and others; any failure is a refusal
            reasons.append(" ".join(str(exc).split()) or type(exc).__name__)
            continue
        _check_every_file_is_covered(folder, signature)
        return
    # A "Signature mismatch" means the signer is accepted and the files differ: the most useful reason.
    mismatch = [r for r in reasons if r.startswith("Signature mismatch")]
    if mismatch:
        raise SignatureInvalid(f"{folder} is not as signed: {_files_differing(mismatch[0])}")
    reason = (reasons or ["no accepted key or certificate root"])[0]
    raise SignatureInvalid(f"{folder}: the signature is not by an accepted signer or is damaged: {_shorten(reason)}")


def _check_every_file_is_covered(folder: Path, signature: Path) -> None:
    """Refuse files the (verified) signature leaves out on purpose: a signer may list paths to ignore
    (upstream's `--ignore-paths`), and a file there could change unnoticed. Only the signature itself
    and the git names (refused above) may be left out."""
    try:
        bundle = strict_json(signature.read_bytes(), str(signature))
        statement = strict_json(base64.b64decode(bundle["dsseEnvelope"]["payload"], validate=True), str(signature))
        ignored = statement["predicate"]["serialization"].get("ignore_paths", [])
    except (KeyError, TypeError, ValueError, AttributeError, MalformedCheckpoint):
        raise SignatureInvalid(f"{signature}: the signed statement has no serialization record") from None
    for name in ignored:
        if not isinstance(name, str):
            raise SignatureInvalid(f"{signature}: the signed statement's ignore_paths is malformed")
        if name != SIGNATURE_NAME and name not in UNSIGNABLE and os.path.lexists(folder / name):
            raise SignatureInvalid(f"{folder / name} is left out of the signature (its signer ignored it); "
                                   "sign the folder without ignored paths")


def check_trust(folder: str | os.PathLike, trust: TrustPolicy | None) -> None:
    """`verify_signature(folder, trust)` if a policy is given (what load_checkpoint calls first)."""
    if trust is not None:
        verify_signature(folder, trust)


def _files_differing(reason: str) -> str:
    """The library's manifest diff (digests as Python reprs) as the file names that differ."""
    parts = []
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]*)\\?'", reason)
    if changed:
        parts.append("changed: " + ", ".join(changed))
    for label, pattern in (("added", r"Extra files found in model \\?'[^']*\\?': ([^'\"\\\]]*)"),
                           ("removed", r"Missing files in model \\?'[^']*\\?': ([^'\"\\\]]*)")):
        found = re.search(pattern, reason)
        if found:
            parts.append(f"{label}: {found.group(1)}")
    return _shorten("; ".join(parts) or reason)


def _shorten(reason: str, limit: int = 400) -> str:
    return reason if len(reason) <= limit else reason[:limit] + "…"
