"""The one place model-signing is imported: lazily, with a one-line error naming the extra to install."""

from __future__ import annotations

from types import ModuleType

from ..errors import ConvertError

INSTALL_HINT = "signing needs the model-signing package: pip install 'ckpt-convert[sign]'"


def model_signing() -> ModuleType:
    """`model_signing` with its signing, verifying and hashing modules loaded; ConvertError if not installed."""
    try:
        import model_signing
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as exc:  # model-signing 1.1 also imports OpenSSL (pyopenssl) without declaring it
        raise ConvertError(f"{INSTALL_HINT} ({exc})") from None
    return model_signing


def hashing_config(ms: ModuleType, signature_name: str):  # -> model_signing.hashing.Config
    """The hashing both sides use: sha256 per file (the library's default), symlinks refused, the
    signature file left out, and the git files the library always leaves out (`.git/`, `.gitignore`,
    ...) recorded as such in the manifest, as upstream's CLI does."""
    return ms.hashing.Config().set_ignored_paths(paths=[signature_name], ignore_git_paths=True).set_allow_symlinks(False)
