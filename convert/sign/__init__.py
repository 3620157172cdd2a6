"""Signed checkpoint folders in the OpenSSF model-signing format (the `model-signing` package).

    >>> sign_folder("ckpts/step100", private_key="signing-key.pem")                          # doctest: +SKIP
    >>> policy = TrustPolicy(public_keys=("signing-key.pub",))                               # doctest: +SKIP
    >>> load_checkpoint("ckpts/step100", trust=policy)                                        # doctest: +SKIP

The signature is `model.sig` inside the folder: a Sigstore bundle (DSSE envelope of an in-toto
statement) listing the sha256 of every file of the folder, checkpoint.json included, written and
checked by `model_signing` itself, so upstream's `model_signing verify key FOLDER --signature
FOLDER/model.sig --public_key KEY` accepts it and ckpt-convert accepts folders upstream signed.

Importing this package imports nothing of model-signing (an optional dependency, `pip install
'ckpt-convert[sign]'`); only signing or verifying does.
"""

from __future__ import annotations

from .context import Signer, as_signer, sign_finished, signing
from .policy import TrustPolicy
from .sign import SIGNATURE_NAME, sign_folder
from .verify import check_trust, verify_signature

__all__ = ["SIGNATURE_NAME", "Signer", "TrustPolicy", "as_signer", "check_trust", "sign_finished", "sign_folder",
           "signing", "verify_signature"]
