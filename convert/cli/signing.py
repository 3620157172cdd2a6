"""`ckpt-convert sign` and the signature half of `ckpt-convert verify FOLDER --public-key KEY`."""

from __future__ import annotations

import argparse
from pathlib import Path


def sign(args: argparse.Namespace) -> int:
    from ..sign import sign_folder

    if args.certificate_chain and not args.signing_certificate:
        from ..errors import ConvertError

        raise ConvertError("--certificate-chain needs --signing-certificate")
    path = sign_folder(args.folder, private_key=args.private_key, signing_certificate=args.signing_certificate,
                       certificate_chain=args.certificate_chain or ())
    if not args.quiet:
        print(f"signed {args.folder}: {path.name} covers every file of the folder")
    return 0


def verify_signed(folder: Path, public_keys: list[str], certificate_roots: list[str]) -> None:
    """Raise UnsignedFolder / SignatureInvalid unless `folder` is signed by one of the keys or roots."""
    from ..sign import TrustPolicy, verify_signature

    verify_signature(folder, TrustPolicy(public_keys=tuple(public_keys), certificate_roots=tuple(certificate_roots)))
    print(f"{folder} is signed by a trusted key and every file is exactly as signed")
