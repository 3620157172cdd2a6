"""Signed checkpoint folders (issue 26): model.sig in the OpenSSF model-signing format, checked before loading."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ms = pytest.importorskip("model_signing", reason="signing tests need the sign extra: pip install 'ckpt-convert[sign]'")
import model_signing.hashing  # noqa: E402
import model_signing.signing  # noqa: E402
import model_signing.verifying  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from convert import TrustPolicy, convert_checkpoint, load_checkpoint  # noqa: E402
from convert.errors import ConvertError, SignatureInvalid, UnsignedFolder  # noqa: E402
from convert.ops.save import save_checkpoint  # noqa: E402
from convert.ops.units import convert_hf_folder  # noqa: E402
from convert.ops.verify import verify_folder  # noqa: E402
from convert.sign import SIGNATURE_NAME, verify_signature  # noqa: E402
from tests.helpers import REPO_ROOT, assert_equivalent, assert_one_line_error, key_pair, run_cli, run_python  # noqa: E402

UPSTREAM_CLI = Path(sys.executable).with_name("model_signing")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {"ours": key_pair(folder, "ours"), "other": key_pair(folder, "other")}


def _state(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"model": {f"layer{i}.weight": torch.randn(40, 40) for i in range(4)}, "step": seed}


def _hf_state(seed: int) -> collections.OrderedDict:  # a state dict comes back as the OrderedDict it was
    return collections.OrderedDict(_state(seed)["model"])


def _sharded_source(tmp_path: Path, seed: int = 0) -> Path:
    src = tmp_path / f"src{seed}.pt"
    torch.save(_state(seed), src)
    return src


def _hf_source(tmp_path: Path, seed: int = 0) -> Path:
    src = tmp_path / f"hf{seed}"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "tiny", "hidden_size": 40}')
    torch.save(_hf_state(seed), src / "pytorch_model.bin")
    return src


def _signed(tmp_path: Path, kind: str, key: Path, seed: int = 0, name: str = "out") -> Path:
    dst = tmp_path / f"{name}-{kind}-{seed}"
    if kind == "sharded":  # data shards + model.safetensors.index.json + checkpoint.json
        convert_checkpoint(_sharded_source(tmp_path, seed), dst, max_shard_size="10KB", sign=key)
    else:  # a Hugging Face folder: model.safetensors + the copied config.json + checkpoint.json
        from convert.sign import signing

        with signing(key):
            convert_hf_folder(_hf_source(tmp_path, seed), dst)
    return dst


def _policy(keys, which: str = "ours", **kw) -> TrustPolicy:
    return TrustPolicy(public_keys=(keys[which][1],), **kw)


def _assert_refused(folder: Path, keys, error=SignatureInvalid, *, match: str | None = None) -> None:
    with pytest.raises(error, match=match):
        verify_signature(folder, _policy(keys))
    with pytest.raises(error, match=match):
        load_checkpoint(folder, trust=_policy(keys))
    proc = run_cli("verify", folder, "--public-key", keys["ours"][1])
    assert_one_line_error(proc, 3)


# ---------------------------------------------------------------------------------------- sign, verify


@pytest.mark.parametrize("kind", ["sharded", "hf"])
def test_signed_folder_verifies_and_loads_with_a_trust_policy(tmp_path, keys, kind):
    folder = _signed(tmp_path, kind, keys["ours"][0])
    names = sorted(os.listdir(folder))
    assert SIGNATURE_NAME in names and "checkpoint.json" in names
    if kind == "sharded":
        assert any(n.endswith(".index.json") for n in names) and sum(n.endswith(".safetensors") for n in names) > 2
    else:
        assert "config.json" in names
    verify_signature(folder, _policy(keys))
    assert verify_folder(folder) == []
    expected = _state(0) if kind == "sharded" else _hf_state(0)
    assert_equivalent(load_checkpoint(folder, trust=_policy(keys)), expected)
    proc = run_cli("verify", folder, "--public-key", keys["other"][1], "--public-key", keys["ours"][1])
    assert proc.returncode == 0, proc.stderr
    assert "signed by a trusted key" in proc.stdout and "is intact" in proc.stdout


def test_the_signature_covers_every_file_checkpoint_json_included(tmp_path, keys):
    folder = _signed(tmp_path, "hf", keys["ours"][0])
    hashed = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME]).hash(folder)
    covered = {rd.identifier for rd in hashed.resource_descriptors()}
    assert covered == set(os.listdir(folder)) - {SIGNATURE_NAME}
    assert {"checkpoint.json", "config.json", "model.safetensors"} <= covered


@pytest.mark.parametrize("kind", ["sharded", "hf"])
def test_one_changed_byte_in_any_file_is_refused(tmp_path, keys, kind):
    signed = _signed(tmp_path, kind, keys["ours"][0])
    names = sorted(n for n in os.listdir(signed) if n != SIGNATURE_NAME)
    assert len(names) >= 3
    for name in names:
        folder = tmp_path / f"tampered-{name}"
        shutil.copytree(signed, folder)
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / name).write_bytes(bytes(data))
        _assert_refused(folder, keys, match=f"changed: {name}")


def test_added_removed_or_hidden_files_are_refused(tmp_path, keys):
    signed = _signed(tmp_path, "sharded", keys["ours"][0])
    added = shutil.copytree(signed, tmp_path / "added")
    (added / "notes.txt").write_text("harmless")
    _assert_refused(added, keys, match="added: notes.txt")
    hidden = shutil.copytree(signed, tmp_path / "hidden")
    (hidden / ".gitattributes").write_text("* binary")  # a name model-signing never hashes
    _assert_refused(hidden, keys, match="not covered by the signature")
    removed = shutil.copytree(signed, tmp_path / "removed")
    shard = next(n for n in os.listdir(removed) if n.endswith(".safetensors"))
    (removed / shard).unlink()
    _assert_refused(removed, keys, match=f"removed: {shard}")
    link = shutil.copytree(signed, tmp_path / "link")
    (link / "alias.json").symlink_to(link / "checkpoint.json")
    _assert_refused(link, keys)


def test_a_file_swapped_in_from_another_signed_folder_is_refused(tmp_path, keys):
    a = _signed(tmp_path, "sharded", keys["ours"][0], seed=1, name="a")
    b = _signed(tmp_path, "sharded", keys["ours"][0], seed=2, name="b")
    for name in ("checkpoint.json", SIGNATURE_NAME):
        folder = shutil.copytree(a, tmp_path / f"swap-{name}")
        shutil.copyfile(b / name, folder / name)
        _assert_refused(folder, keys)
    # the whole signed set of b's files under a's name: a consistent folder, signed by us: that one IS b
    whole = shutil.copytree(b, tmp_path / "whole")
    verify_signature(whole, _policy(keys))


def test_wrong_key_and_unsigned_folders_are_refused(tmp_path, keys):
    folder = _signed(tmp_path, "sharded", keys["ours"][0])
    with pytest.raises(SignatureInvalid, match="not by an accepted signer"):
        verify_signature(folder, _policy(keys, "other"))
    with pytest.raises(SignatureInvalid):
        load_checkpoint(folder, trust=_policy(keys, "other"))
    unsigned = tmp_path / "unsigned"
    convert_checkpoint(_sharded_source(tmp_path), unsigned)
    _assert_refused(unsigned, keys, UnsignedFolder, match="is not signed")
    assert_equivalent(load_checkpoint(unsigned, trust=_policy(keys, allow_unsigned=True)), _state(0))
    # allow_unsigned does not let a signed folder be tampered with
    (folder / "checkpoint.json").write_bytes((folder / "checkpoint.json").read_bytes() + b" ")
    with pytest.raises(SignatureInvalid):
        load_checkpoint(folder, trust=_policy(keys, allow_unsigned=True))
    with pytest.raises(ValueError, match="public_keys or certificate_roots"):
        TrustPolicy()


def test_refusal_comes_before_anything_of_the_folder_is_parsed(tmp_path, keys, monkeypatch):
    folder = _signed(tmp_path, "sharded", keys["ours"][0])
    (folder / "notes.txt").write_text("added")
    import convert.load

    def parsed(*args, **kwargs):
        raise AssertionError("the folder was parsed before its signature was checked")

    monkeypatch.setattr(convert.load, "read_sidecar", parsed)
    with pytest.raises(SignatureInvalid):
        load_checkpoint(folder, trust=_policy(keys))


# ------------------------------------------------------------------------------ upstream interop


def test_folder_signed_by_ckpt_convert_verifies_with_upstream_api_and_cli(tmp_path, keys):
    folder = _signed(tmp_path, "hf", keys["ours"][0])
    signature = folder / SIGNATURE_NAME
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["ours"][1]).verify(folder, signature)
    proc = subprocess.run([UPSTREAM_CLI, "verify", "key", folder, "--signature", signature,
                           "--public_key", keys["ours"][1]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Verification succeeded" in proc.stdout, proc.stderr
    (folder / "config.json").write_text("{}")  # and upstream refuses what we refuse
    with pytest.raises(ValueError, match="Signature mismatch"):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["ours"][1]).verify(folder, signature)


def test_folder_signed_by_upstream_api_and_cli_verifies_with_ckpt_convert(tmp_path, keys):
    by_api = tmp_path / "api"
    convert_checkpoint(_sharded_source(tmp_path), by_api, max_shard_size="10KB")
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME])
    model_signing.signing.Config().use_elliptic_key_signer(private_key=keys["ours"][0]).set_hashing_config(
        hashing).sign(by_api, by_api / SIGNATURE_NAME)
    verify_signature(by_api, _policy(keys))
    assert_equivalent(load_checkpoint(by_api, trust=_policy(keys)), _state(0))

    by_cli = tmp_path / "cli"
    convert_checkpoint(_sharded_source(tmp_path), by_cli)
    proc = subprocess.run([UPSTREAM_CLI, "sign", "key", by_cli, "--signature", by_cli / SIGNATURE_NAME,
                           "--private_key", keys["ours"][0]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("verify", by_cli, "--public-key", keys["ours"][1])
    assert proc.returncode == 0, proc.stderr
    (by_cli / "checkpoint.json").write_bytes((by_cli / "checkpoint.json").read_bytes() + b"\n")
    _assert_refused(by_cli, keys, match="changed: checkpoint.json")


def test_a_signature_that_leaves_a_present_file_out_is_refused(tmp_path, keys):
    folder = tmp_path / "out"
    convert_checkpoint(_sharded_source(tmp_path), folder)
    (folder / "README.md").write_text("model card")
    proc = subprocess.run([UPSTREAM_CLI, "sign", "key", folder, "--signature", folder / SIGNATURE_NAME,
                           "--private_key", keys["ours"][0], "--ignore-paths", folder / "README.md"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (folder / "README.md").write_text("changed, and upstream does not notice")
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["ours"][1]).verify(
        folder, folder / SIGNATURE_NAME)
    _assert_refused(folder, keys, match="left out of the signature")
    (folder / "README.md").unlink()  # nothing present is left out: accepted
    verify_signature(folder, _policy(keys))


# ------------------------------------------------------------------------------ signing as it writes


def test_cli_convert_sign_key_and_sign_command(tmp_path, keys):
    src = _sharded_source(tmp_path)
    proc = run_cli("convert", src, tmp_path / "out", "--sign-key", keys["ours"][0])
    assert proc.returncode == 0, proc.stderr
    verify_signature(tmp_path / "out", _policy(keys))

    plain = tmp_path / "plain"
    assert run_cli("convert", src, plain).returncode == 0
    _assert_refused(plain, keys, UnsignedFolder)
    proc = run_cli("sign", plain, "--private-key", keys["ours"][0])
    assert proc.returncode == 0, proc.stderr
    verify_signature(plain, _policy(keys))
    # re-signing after a legitimate change replaces the signature (written aside, renamed into place)
    (plain / "README.md").write_text("model card")
    _assert_refused(plain, keys)
    assert run_cli("sign", plain, "--private-key", keys["ours"][0]).returncode == 0
    verify_signature(plain, _policy(keys))
    assert not (plain / ".model.sig.partial").exists()

    assert_one_line_error(run_cli("convert", src, tmp_path / "nokey", "--sign-key", tmp_path / "missing.pem"))
    assert not (tmp_path / "nokey").exists()
    assert_one_line_error(run_cli("sign", plain, "--private-key", keys["ours"][1]))  # a public key cannot sign
    assert_one_line_error(run_cli("verify", src, plain, "--public-key", keys["ours"][1]))
    assert_one_line_error(run_cli("verify", plain, "--public-key", tmp_path / "missing.pub"))
    (plain / "alias.json").symlink_to("checkpoint.json")
    proc = run_cli("sign", plain, "--private-key", keys["ours"][0])
    assert_one_line_error(proc)
    assert "symlink" in proc.stderr and "allow_symlinks" not in proc.stderr


def test_save_checkpoint_sign_and_overwrite_keep_the_folder_signed(tmp_path, keys):
    folder = tmp_path / "saved"
    save_checkpoint(_state(3), folder, sign=keys["ours"][0])
    assert_equivalent(load_checkpoint(folder, trust=_policy(keys)), _state(3))
    save_checkpoint(_state(4), folder, overwrite=True, sign=keys["ours"][0])
    assert_equivalent(load_checkpoint(folder, trust=_policy(keys)), _state(4))
    save_checkpoint(_state(5), folder, overwrite=True)  # overwritten without signing: no stale signature survives
    assert not (folder / SIGNATURE_NAME).exists()


def test_migrate_sign_key_signs_every_folder(tmp_path, keys):
    zoo = tmp_path / "zoo"
    (zoo / "runs").mkdir(parents=True)
    torch.save(_state(1), zoo / "a.pt")
    torch.save(_state(2), zoo / "runs" / "b.pth")
    (zoo / "hf").mkdir()
    (zoo / "hf" / "config.json").write_text('{"model_type": "tiny"}')
    torch.save(_hf_state(3), zoo / "hf" / "pytorch_model.bin")
    proc = run_cli("migrate", zoo, tmp_path / "dst", "--sign-key", keys["ours"][0], "-j", "2", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = [tmp_path / "dst" / rel for rel in ("a.pt", "runs/b.pth", "hf")]  # stable names: file names kept
    for folder, expected in zip(outputs, (_state(1), _state(2), _hf_state(3))):
        assert_equivalent(load_checkpoint(folder, trust=_policy(keys)), expected)


def test_lightning_plugin_signs_checkpoints_and_loads_them_with_a_trust_policy(tmp_path, keys):
    L = pytest.importorskip("lightning")  # noqa: N806
    from lightning.pytorch.callbacks import ModelCheckpoint

    from convert.lightning import SafetensorsCheckpointIO

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4)
    plugin = SafetensorsCheckpointIO(sign_key=keys["ours"][0], trust=_policy(keys))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[plugin],
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Tiny(), data)
    (folder,) = (tmp_path / "ckpts").iterdir()
    verify_signature(folder, _policy(keys))
    assert plugin.load_checkpoint(folder)["epoch"] == 0
    (folder / "checkpoint.json").write_bytes((folder / "checkpoint.json").read_bytes() + b" ")
    with pytest.raises(SignatureInvalid):
        plugin.load_checkpoint(folder)
    pickled = tmp_path / "old.ckpt"
    torch.save({"epoch": 1}, pickled)
    with pytest.raises(UnsignedFolder):  # an old pickled .ckpt has no signature: refused under a policy
        plugin.load_checkpoint(pickled)
    assert SafetensorsCheckpointIO(trust=_policy(keys, allow_unsigned=True)).load_checkpoint(pickled) == {"epoch": 1}


# ------------------------------------------------------------------------------ failures while signing


def test_signer_failing_leaves_no_destination(tmp_path, keys, monkeypatch):
    import convert.sign.context

    def broken(folder, **kwargs):
        raise ConvertError("signing service unavailable")

    monkeypatch.setattr(convert.sign.context, "sign_folder", broken)
    with pytest.raises(ConvertError, match="unavailable"):
        convert_checkpoint(_sharded_source(tmp_path), tmp_path / "out" / "ckpt", sign=keys["ours"][0])
    assert not (tmp_path / "out").exists()


KILLED_WHILE_SIGNING = r"""
import os, signal, sys
import convert.sign.context as context
real = context.sign_folder
def killed(folder, **kwargs):
    if sys.argv[3] == "after":
        real(folder, **kwargs)  # the signature is written, the folder not yet renamed into place
    os.kill(os.getpid(), signal.SIGKILL)
context.sign_folder = killed
from convert import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2], sign=sys.argv[4])
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_run_killed_while_signing_leaves_no_folder_and_the_next_run_signs(tmp_path, keys, when):
    src, dst = _sharded_source(tmp_path), tmp_path / "out" / "ckpt"
    (tmp_path / "out").mkdir()
    proc = run_python(KILLED_WHILE_SIGNING, src, dst, when, keys["ours"][0], pythonpath=[REPO_ROOT])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not dst.exists()
    assert run_cli("convert", src, dst, "--sign-key", keys["ours"][0]).returncode == 0
    verify_signature(dst, _policy(keys))
    assert os.listdir(tmp_path / "out") == ["ckpt"]  # the killed run's temporary folder is gone too


# ------------------------------------------------------------------------------ optional dependency

NO_MODEL_SIGNING = r"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "model_signing" or name.startswith("model_signing."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
if sys.argv[1] == "block":
    sys.meta_path.insert(0, Blocked())
from convert.cli import main
rc = main(sys.argv[2:])
if any(m == "model_signing" or m.startswith("model_signing.") for m in sys.modules):
    print("model_signing was imported", file=sys.stderr)
    sys.exit(99)
sys.exit(rc)
"""


def test_without_model_signing_sign_options_say_what_to_install_and_the_rest_never_imports_it(tmp_path, keys):
    src, signed = _sharded_source(tmp_path), _signed(tmp_path, "sharded", keys["ours"][0])
    for args in (["convert", src, tmp_path / "x", "--sign-key", keys["ours"][0]],
                 ["sign", signed, "--private-key", keys["ours"][0]],
                 ["verify", signed, "--public-key", keys["ours"][1]]):
        proc = run_python(NO_MODEL_SIGNING, "block", *args, pythonpath=[REPO_ROOT])
        assert_one_line_error(proc, 2)
        assert "pip install 'ckpt-convert[sign]'" in proc.stderr
    assert not (tmp_path / "x").exists()
    for args in (["scan", src], ["convert", src, tmp_path / "y"]):  # nothing of signing unless asked for
        proc = run_python(NO_MODEL_SIGNING, "pass", *args, pythonpath=[REPO_ROOT])
        assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------ certificates


def _certificate_authority(folder: Path, name: str):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer_name, issuer_key, ca: bool):
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                                crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} root")])
    ca = certificate(f"{name} root", ca_key, ca_name, ca_key, True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate(f"{name} release signer", leaf_key, ca_name, ca_key, False)
    paths = {"root": folder / f"{name}-root.pem", "leaf": folder / f"{name}-leaf.pem", "key": folder / f"{name}-leaf.key"}
    paths["root"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["leaf"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return paths


def test_certificate_signed_folder_verifies_against_its_root_only(tmp_path):
    ours, theirs = _certificate_authority(tmp_path, "ours"), _certificate_authority(tmp_path, "theirs")
    folder = tmp_path / "out"
    convert_checkpoint(_sharded_source(tmp_path), folder)
    proc = run_cli("sign", folder, "--private-key", ours["key"], "--signing-certificate", ours["leaf"],
                   "--certificate-chain", ours["root"])
    assert proc.returncode == 0, proc.stderr
    assert_equivalent(load_checkpoint(folder, trust=TrustPolicy(certificate_roots=(ours["root"],))), _state(0))
    proc = run_cli("verify", folder, "--certificate-root", ours["root"])
    assert proc.returncode == 0, proc.stderr
    model_signing.verifying.Config().use_certificate_verifier(certificate_chain=[ours["root"]]).verify(
        folder, folder / SIGNATURE_NAME)  # upstream agrees
    with pytest.raises(SignatureInvalid, match="not by an accepted signer"):
        verify_signature(folder, TrustPolicy(certificate_roots=(theirs["root"],)))
    (folder / "checkpoint.json").write_bytes((folder / "checkpoint.json").read_bytes() + b" ")
    with pytest.raises(SignatureInvalid, match=r"changed: checkpoint\.json"):
        load_checkpoint(folder, trust=TrustPolicy(certificate_roots=(ours["root"],)))


def test_convert_sign_key_and_sign_need_no_torch(tmp_path, keys):
    from tests.test_torch_free import run_without_torch

    src = _sharded_source(tmp_path)
    proc = run_without_torch("convert", src, tmp_path / "out", "--sign-key", keys["ours"][0], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_without_torch("sign", tmp_path / "out", "--private-key", keys["ours"][0], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    verify_signature(tmp_path / "out", _policy(keys))
