"""`migrate` and folder `scan`: a folder of ≥ 200 mixed checkpoints, resumability, kill safety,
sharding, and Hugging Face folders that transformers loads."""

from __future__ import annotations

import collections
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from convert import convert_checkpoint, load_checkpoint
from convert.migrate import migrate, scan_folder
from convert.migrate.journal import JOURNAL_NAME, KILL_ENV, read_journal
from convert.migrate.lock import LOCK_NAME
from convert.migrate.report import REPORT_NAME
from convert.ops.units import convert_hf_folder
from convert.primitives.temp import is_temporary
from tests.helpers import (
    REPO_ROOT,
    EvilEval,
    EvilSystem,
    Net,
    assert_equivalent,
    comparable_snapshot,
    make_net,
    numpy_payload,
    rerun_until_no_temporaries,
    trained,
)

N_GOOD = 200
MALICIOUS = ("evil_system.pkl", "evil_eval.pt", "nested/evil.bin")
CORRUPT = ("truncated.pt", "garbage.pth", "truncated_legacy.pt")


def _save_kind(i: int, path: Path, model: Net, optimizer: torch.optim.Optimizer) -> None:
    """One of the core issue's input kinds, chosen by i."""
    kind = i % 8
    if kind == 0:
        torch.save(model.state_dict(), path)
    elif kind == 1:
        torch.save({"epoch": i, "model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                    "loss": 0.5 + i}, path)
    elif kind == 2:
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=False)
    elif kind == 3:
        with open(path, "wb") as f:
            pickle.dump(numpy_payload(), f, protocol=i % 6)
    elif kind == 4:
        torch.save(model, path)
    elif kind == 5:
        torch.save({"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()], "epoch": i,
                    "global_step": 10 * i, "pytorch-lightning_version": "2.4.0"}, path)
    elif kind == 6:
        torch.save({"rng": torch.get_rng_state(), "np_rng": np.random.get_state(), "py_rng": random.getstate()}, path)
    else:
        torch.save({"modelA_state_dict": model.state_dict(), "modelB_state_dict": model.state_dict(),
                    "loss": torch.nn.CrossEntropyLoss()}, path)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """≥ 200 checkpoints of every input kind in nested folders, plus malicious, corrupt and other files."""
    root = tmp_path_factory.mktemp("zoo") / "src"
    model = make_net(seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trained(model, optimizer)
    suffixes = (".pt", ".pth", ".bin", ".pkl", ".ckpt", ".tar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(N_GOOD):
            folder = root / f"group{i % 7}" / (f"sub{i % 3}" if i % 2 else "")
            folder.mkdir(parents=True, exist_ok=True)
            _save_kind(i, folder / f"ckpt_{i:03d}{suffixes[i % len(suffixes)]}", model, optimizer)
    (root / "nested").mkdir(exist_ok=True)
    canary = root.parent / "CANARY"
    for name, evil in zip(MALICIOUS, (EvilSystem(canary), EvilEval(canary), EvilSystem(canary)), strict=True):
        with open(root / name, "wb") as f:
            pickle.dump({"weights": [1.0], "payload": evil}, f, protocol=2)
    good = (root / "group0" / "ckpt_000.pt").read_bytes()
    (root / "truncated.pt").write_bytes(good[: len(good) // 2])
    (root / "garbage.pth").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    legacy = (root / "group2" / "ckpt_002.bin").read_bytes()  # kind 2: legacy format
    (root / "truncated_legacy.pt").write_bytes(legacy[: len(legacy) - 100])
    (root / "README.md").write_text("not a checkpoint")
    (root / "group1" / "config.yaml").write_text("lr: 0.1")
    return root


def _hashes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _outputs(dst: Path) -> dict[str, bytes]:
    """Every output file except the journal, lock and report (which hold timings and pids), modulo folder ids."""
    return {k: v for k, v in comparable_snapshot(dst).items() if k not in (JOURNAL_NAME, LOCK_NAME, REPORT_NAME)}


@pytest.fixture(scope="module")
def first_run(zoo, tmp_path_factory):
    before = _hashes(zoo)
    dst = tmp_path_factory.mktemp("migrated") / "dst"
    report = migrate(zoo, dst, jobs=2)
    assert _hashes(zoo) == before, "migrate must never modify the source folder"
    return dst, report


def test_first_run_converts_every_checkpoint_and_reports_the_rest(zoo, first_run):
    dst, report = first_run
    statuses = collections.Counter(e["status"] for e in report.files.values())
    assert statuses == {"converted": N_GOOD, "unsafe": len(MALICIOUS), "failed": len(CORRUPT)}, statuses
    assert report.other_files == 2
    assert report.exit_code == 3  # unsafe (1) and failed (2): neither hides the other
    assert not (zoo.parent / "CANARY").exists()
    for rel in MALICIOUS:
        assert report.files[rel]["findings"], rel
        assert not (dst / Path(rel).parent / Path(rel).stem).exists()
    for rel in CORRUPT:
        assert report.files[rel]["reason"].startswith("malformed"), report.files[rel]
    for entry in report.files.values():
        if entry["status"] == "converted":
            assert entry["verified"] is True
            assert (dst / entry["output"] / "checkpoint.json").is_file()
    # the folder structure is mirrored, full file names kept: group3/sub0/ckpt_003.pkl → group3/sub0/ckpt_003.pkl/
    assert report.files["group3/sub0/ckpt_003.pkl"]["output"] == "group3/sub0/ckpt_003.pkl"
    on_disk = json.loads((dst / REPORT_NAME).read_text())
    assert on_disk["summary"]["converted"] == N_GOOD and on_disk["exit_code"] == 3


def test_converted_outputs_load_equivalent_to_the_sources(zoo, first_run):
    dst, report = first_run
    from convert import read_checkpoint

    for rel in ("group0/ckpt_000.pt", "group1/sub1/ckpt_001.pth", "group2/ckpt_002.bin", "group3/sub0/ckpt_003.pkl",
                "group4/ckpt_004.ckpt", "group5/sub2/ckpt_005.tar", "group6/ckpt_006.pt", "group0/sub1/ckpt_007.pth"):
        entry = report.files[rel]
        assert_equivalent(read_checkpoint(zoo / rel), load_checkpoint(dst / entry["output"]))


def test_second_run_does_nothing(zoo, first_run):
    dst, _ = first_run
    outputs = _outputs(dst)
    again = migrate(zoo, dst, jobs=2)
    statuses = collections.Counter(e["status"] for e in again.files.values())
    assert statuses == {"skipped": N_GOOD, "unsafe": len(MALICIOUS), "failed": len(CORRUPT)}, statuses
    assert _outputs(dst) == outputs


def test_killed_run_resumes_to_the_same_result(zoo, first_run, tmp_path):
    """kill -9 of the driver right after its 40th journal line, then a re-run: same outputs, nothing redone."""
    dst_full, report = first_run
    dst = tmp_path / "dst"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore", KILL_ENV: "journal:40"}
    proc = subprocess.run([sys.executable, "-m", "convert", "migrate", str(zoo), str(dst), "-q", "-j", "2"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    journal = read_journal(dst)
    assert journal.dropped == 0
    finished = {k for k, e in journal.entries.items() if e["status"] != "started"}  # the rest: in flight when killed
    assert len(finished) == 40
    finished = {k for k in finished if journal.entries[k]["status"] == "converted"}
    assert 20 <= len(finished) <= 40
    stamps = {k: (dst / e["output"] / "checkpoint.json").stat().st_ino for k, e in journal.entries.items()
              if k in finished}

    resumed = migrate(zoo, dst, jobs=2)
    # what the killed run finished is skipped, the rest converted now; refusals and failures are the same
    expected = {k: ("skipped" if k in finished else e["status"]) for k, e in report.files.items()}
    got = {k: e["status"] for k, e in resumed.files.items()}
    differing = {k: (expected.get(k), v, resumed.files[k].get("reason")) for k, v in got.items() if v != expected.get(k)}
    assert got == expected, differing
    assert {k: (dst / resumed.files[k]["output"] / "checkpoint.json").stat().st_ino for k in finished} == stamps
    rerun_until_no_temporaries(dst, lambda: migrate(zoo, dst, jobs=2))
    assert _outputs(dst) == _outputs(dst_full)
    assert not [p for p in dst.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name or is_temporary(p)]
    assert len((dst / JOURNAL_NAME).read_text().splitlines()) == 1 + len(report.files)  # compacted


def test_scan_folder_uses_the_same_walker_and_report(zoo):
    report = scan_folder(zoo, jobs=2)
    statuses = collections.Counter(e["status"] for e in report.files.values())
    assert statuses == {"clean": N_GOOD, "unsafe": len(MALICIOUS), "failed": len(CORRUPT)}, statuses
    assert report.exit_code == 3  # unsafe and failed
    assert set(report.to_json()) >= {"summary", "files", "exit_code", "other_files"}


def test_migrate_cli_exit_code_and_summary(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save({"w": torch.ones(2)}, src / "a.pt")
    ok = subprocess.run([sys.executable, "-m", "convert", "migrate", str(src), str(tmp_path / "dst"), "-q"],
                        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "converted" in ok.stdout and "Traceback" not in ok.stderr
    with open(src / "evil.pkl", "wb") as f:
        pickle.dump(EvilSystem(tmp_path / "CANARY"), f)
    bad = subprocess.run([sys.executable, "-m", "convert", "migrate", str(src), str(tmp_path / "dst"), "--json"],
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    doc = json.loads(bad.stdout)
    assert doc["files"]["evil.pkl"]["status"] == "unsafe" and doc["files"]["a.pt"]["status"] == "skipped"
    assert not (tmp_path / "CANARY").exists()


# ------------------------------------------------------------------------------------------- shards

def test_max_shard_size_shards_and_loads_transparently(tmp_path):
    sd = collections.OrderedDict((f"layer{i}.weight", torch.randn(64, 64)) for i in range(8))
    sd["tied.weight"] = sd["layer0.weight"]  # one object under two keys: both in the same shard
    sd["view.weight"] = sd["layer3.weight"].t()
    src = tmp_path / "big.pt"
    torch.save({"model": sd, "step": 3}, src)
    out = tmp_path / "out"
    convert_checkpoint(src, out, max_shard_size="40KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(s.startswith("model-0000") and s.endswith(f"-of-{len(shards):05d}.safetensors")
                                   for s in shards)
    assert set(index["weight_map"]) == set(sd)
    assert index["weight_map"]["tied.weight"] == index["weight_map"]["layer0.weight"]
    assert index["weight_map"]["view.weight"] == index["weight_map"]["layer3.weight"]
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in sd.values())
    merged = {}
    for shard in shards:
        merged.update(load_file(out / shard))
    assert merged.keys() == sd.keys() and all(torch.equal(merged[k], sd[k]) for k in sd)
    loaded = load_checkpoint(out)
    assert_equivalent(torch.load(src, weights_only=True), loaded)
    assert loaded["model"]["tied.weight"] is loaded["model"]["layer0.weight"]


def test_migrate_passes_the_shard_size(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save({f"w{i}": torch.randn(32, 32) for i in range(6)}, src / "m.pt")
    report = migrate(src, tmp_path / "dst", jobs=1, max_shard_size="10KB")
    assert report.files["m.pt"]["status"] == "converted"
    assert (tmp_path / "dst" / "m.pt" / "model.safetensors.index.json").is_file()


# ------------------------------------------------------------------------------------- Hugging Face

def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers, transformers.GPT2LMHeadModel(config).eval()


def _assert_same_model(transformers, original, folder):
    loaded = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.arange(8).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(original(ids).logits, loaded(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # still tied


def test_hf_folder_single_file_loads_in_transformers(tmp_path):
    transformers, model = _tiny_gpt2()
    src = tmp_path / "gpt2"
    model.config.save_pretrained(src)
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    (src / "tokenizer_config.json").write_text("{}")
    dst = tmp_path / "gpt2-safe"
    convert_hf_folder(src, dst)
    assert (dst / "model.safetensors").is_file() and (dst / "config.json").is_file()
    assert (dst / "tokenizer_config.json").is_file() and not (dst / "pytorch_model.bin").exists()
    _assert_same_model(transformers, model, dst)


def test_hf_sharded_folder_migrates_and_loads_in_transformers(tmp_path):
    transformers, model = _tiny_gpt2()
    src = tmp_path / "zoo" / "gpt2-sharded"
    model.config.save_pretrained(src)
    sd = model.state_dict()
    keys = list(sd)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves):
        name = f"pytorch_model-{i + 1:05d}-of-00002.bin"
        torch.save(collections.OrderedDict((k, sd[k]) for k in part), src / name)
        weight_map.update(dict.fromkeys(part, name))
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 0},
                                                                  "weight_map": weight_map}))
    report = migrate(tmp_path / "zoo", tmp_path / "out", jobs=1)
    assert report.files["gpt2-sharded"]["status"] == "converted", report.files
    dst = tmp_path / "out" / "gpt2-sharded"
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
    _assert_same_model(transformers, model, dst)


def test_long_state_dict_key_still_shards(tmp_path):
    key = "k" * 300  # file names are shortened, leaving room for the -00001-of-0000N suffix
    torch.save({key: {f"w{i}": torch.randn(50, 50) for i in range(4)}}, tmp_path / "long.pt")
    report = convert_checkpoint(tmp_path / "long.pt", tmp_path / "out", max_shard_size="15KB")
    assert sum(name.endswith("-of-00004.safetensors") for name in report.files) == 4
    assert list(load_checkpoint(tmp_path / "out")[key]) == [f"w{i}" for i in range(4)]


def test_parent_folder_made_by_a_parallel_worker_is_not_an_error(tmp_path, monkeypatch):
    """Two migrate workers may both see a missing parent and both create it (a race found by the kill test)."""
    from convert.write import folder as folder_module

    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    parent = tmp_path / "out" / "group"
    real_exists = Path.exists

    def exists_but_lagging(self):  # the other worker creates `parent` right after our check
        if self == parent and not real_exists(self):
            self.mkdir(parents=True)
            return False
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", exists_but_lagging)
    convert_checkpoint(tmp_path / "a.pt", parent / "a")
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(parent / "a")["w"], torch.ones(2))
    assert folder_module._make_parents(parent) == []
