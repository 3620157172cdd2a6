"""Issue 20 (migrate) + issue 21 (walkers): units are whole, names are stable, nothing migrate did not write is
replaced, no pickle is ever copied into an output, messy names and signals end cleanly."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from convert.migrate import migrate, migrate_status
from convert.migrate.journal import JOURNAL_NAME, read_journal
from convert.migrate.report import REPORT_NAME
from convert.migrate.worker import FAULT_ENV
from convert.sources.discover import WalkStats, pickle_bytes, walk
from tests.helpers import REPO_ROOT, EvilSystem, run_cli, stale_temporaries


def _save(path: Path, value: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.full((3,), value)}, path)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_pickles(root: Path) -> None:
    """Nothing under `root` (a migrate output) is a pickle or a zip."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                assert not pickle_bytes(f.read(4)), f"a pickle was copied into the output: {path}"


def _trainer_checkpoint(folder: Path) -> None:
    """A Trainer checkpoint-500 with DeepSpeed's global_step500/ inside."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"global_step": 500}')
    (folder / "config.json").write_text("{}")
    torch.save({"lr": 0.1}, folder / "scheduler.pt")
    torch.save({"state": {0: {"step": torch.tensor(3.0)}}}, folder / "optimizer.pt")
    torch.save({"args": [1, 2]}, folder / "training_args.bin")
    torch.save({"python": [1, 2, 3]}, folder / "rng_state.pth")
    _save(folder / "global_step500" / "mp_rank_00_model_states.pt", 2.0)
    _save(folder / "global_step500" / "zero_pp_rank_0_mp_rank_00_optim_states.pt", 3.0)
    (folder / "global_step500" / "notes.txt").write_text("deepspeed")


def _sentence_transformers(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "modules.json").write_text("[]")
    torch.save({"emb.weight": torch.ones(4, 2)}, folder / "pytorch_model.bin")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text('{"in_features": 2}')
    torch.save({"linear.weight": torch.ones(2, 2)}, folder / "2_Dense" / "pytorch_model.bin")


# --------------------------------------------------------------------------- destination rules

def test_user_files_in_the_way_fail_only_that_job_and_stay_untouched(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src / "keep.pt")
    _save(src / "other.pt")
    for folder in (dst / "keep", dst / "keep.pt"):  # the previous release's name and the stable one
        folder.mkdir(parents=True)
        (folder / "mine.txt").write_text("user data")
    before = _tree(dst)
    proc = run_cli("migrate", src, dst, "-q")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    report = json.loads((dst / REPORT_NAME).read_text())
    keep = report["files"]["keep.pt"]
    # the writer's one wording for user files in the way (as convert --overwrite says it), naming them
    assert keep["status"] == "failed" and "holds files ckpt-convert did not write (mine.txt)" in keep["reason"]
    assert "\n" not in keep["reason"]
    assert report["files"]["other.pt"]["status"] == "converted"
    assert {k: v for k, v in _tree(dst).items() if k.startswith("keep")} == before
    again = migrate(src, dst, jobs=1)  # a failed refusal never turns into ownership
    assert again.files["keep.pt"]["status"] == "failed"
    assert {k: v for k, v in _tree(dst).items() if k.startswith("keep")} == before


def test_destination_inside_the_source_never_deletes_a_source(tmp_path):
    zoo = tmp_path / "zoo"
    _save(zoo / "a.pt", 1.0)
    _save(zoo / "models" / "a.pt", 2.0)  # a source where a.pt's output would go
    _save(zoo / "models" / "b.pt", 3.0)
    sources = _tree(zoo / "models")
    report = migrate(zoo, zoo / "models", jobs=1)
    assert _tree(zoo / "models").items() >= sources.items()  # every source byte-identical, none deleted
    assert report.files["a.pt"]["status"] == "failed" and report.exit_code == 2
    assert "models/b.pt" not in report.files and any("not walked" in n for n in report.notes)


def test_same_stem_names_get_distinct_outputs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src / "m.pt", 1.0)
    _save(src / "m.pth", 2.0)
    _save(src / "m.pt.converted" / "x.pt", 3.0)
    report = migrate(src, dst, jobs=1)
    assert report.summary["converted"] == 3 and report.exit_code == 0
    outputs = {rel: e["output"] for rel, e in report.files.items()}
    assert outputs == {"m.pt": "m.pt", "m.pth": "m.pth", "m.pt.converted/x.pt": "m.pt.converted/x.pt"}
    from convert import load_checkpoint

    assert [load_checkpoint(dst / o)["w"][0].item() for o in outputs.values()] == [1.0, 2.0, 3.0]


def test_names_do_not_depend_on_siblings(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src / "a.pt", 1.0)
    assert migrate(src, dst, jobs=1).files["a.pt"]["output"] == "a.pt"
    _save(src / "a.pth", 5.0)
    time.sleep(0.01)
    _save(src / "a.pt", 7.0)  # retrained
    report = migrate(src, dst, jobs=1)
    assert report.files["a.pt"] == report.files["a.pt"] | {"status": "converted", "output": "a.pt"}
    from convert import load_checkpoint

    assert load_checkpoint(dst / "a.pt")["w"][0].item() == 7.0
    assert load_checkpoint(dst / "a.pth")["w"][0].item() == 5.0


# --------------------------------------------------------------------------- units are whole

def test_trainer_checkpoint_with_deepspeed_subfolder_is_one_job(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _trainer_checkpoint(src / "run" / "checkpoint-500")
    report = migrate(src, dst, jobs=2)
    assert list(report.files) == ["run/checkpoint-500"], report.files
    assert report.files["run/checkpoint-500"]["status"] == "converted", report.files
    out = dst / "run" / "checkpoint-500"
    for name in ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth",
                 "global_step500/mp_rank_00_model_states.pt", "global_step500/zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        assert (out / name / "checkpoint.json").is_file(), name
    assert (out / "global_step500" / "notes.txt").read_text() == "deepspeed"
    _no_pickles(dst)
    first = _tree(dst / "run")
    again = migrate(src, dst, jobs=2)
    assert again.files["run/checkpoint-500"]["status"] == "skipped" and _tree(dst / "run") == first


def test_sentence_transformers_folder_is_one_job_with_its_module_subfolders(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _sentence_transformers(src / "mini")
    torch.save({"args": 1}, src / "mini" / "training_args.bin")
    report = migrate(src, dst, jobs=1)
    assert list(report.files) == ["mini"] and report.files["mini"]["status"] == "converted", report.files
    out = dst / "mini"
    assert (out / "model.safetensors").is_file() and (out / "modules.json").is_file()
    assert (out / "1_Pooling" / "config.json").read_text() == '{"pooling_mode_mean_tokens": true}'
    assert (out / "2_Dense" / "model.safetensors").is_file() and (out / "2_Dense" / "config.json").is_file()
    assert (out / "training_args.bin" / "checkpoint.json").is_file()
    _no_pickles(dst)


def test_a_malicious_pickle_in_a_unit_refuses_the_unit(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _sentence_transformers(src / "mini")
    (src / "mini" / "training_args.bin").write_bytes(pickle.dumps(EvilSystem(tmp_path / "CANARY"), protocol=2))
    report = migrate(src, dst, jobs=1)
    assert report.files["mini"]["status"] == "unsafe" and report.exit_code == 1
    assert not (dst / "mini").exists() and not (tmp_path / "CANARY").exists()
    proc = run_cli("scan", src)  # scan reads the unit file by file: the training_args.bin too
    assert proc.returncode == 1 and "training_args.bin" in proc.stdout, proc.stdout


def test_hf_cache_snapshot_links_are_followed_and_outside_links_reported(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    repo = src / "models--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    torch.save({"w": torch.ones(2)}, blobs / "1111")
    (blobs / "2222").write_text("{}")
    (blobs / "3333").write_text('{"tok": 1}')
    for name, blob in (("pytorch_model.bin", "1111"), ("config.json", "2222"), ("tokenizer.json", "3333")):
        (snap / name).symlink_to(Path("..", "..", "blobs", blob))
    outside = _save(tmp_path / "elsewhere" / "secret.pt")
    (src / "link.pt").symlink_to(outside)
    (snap / "extra.bin").symlink_to(outside)  # inside the unit, leading out: not followed, reported
    report = migrate(src, dst, jobs=1)
    rel = "models--tiny/snapshots/abc123"
    assert list(report.files) == [rel] and report.files[rel]["status"] == "converted", report.files
    out = dst / rel
    assert (out / "model.safetensors").is_file()
    assert (out / "config.json").read_text() == "{}" and (out / "tokenizer.json").read_text() == '{"tok": 1}'
    assert not (out / "config.json").is_symlink()
    doc = json.loads((dst / REPORT_NAME).read_text())
    assert sorted(s["path"] for s in doc["skipped_paths"]) == ["link.pt", f"{rel}/extra.bin"]
    assert not (out / "extra.bin").exists()
    assert "outside the source" in doc["skipped_paths"][0]["reason"]
    proc = run_cli("migrate", src, tmp_path / "dst2", "-q")
    assert proc.returncode == 0 and "link.pt: symlink leading outside" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- walkers (issue 21)

def test_a_stray_metadata_file_does_not_hide_the_tree(tmp_path):
    root = tmp_path / "tree"
    (root / "deep").mkdir(parents=True)
    (root / ".metadata").write_bytes(b"\x00" * 155)
    (root / "deep" / "evil.pt").write_bytes(pickle.dumps(EvilSystem(tmp_path / "CANARY"), protocol=2))
    found = list(walk(root, WalkStats()))
    assert [(f.kind, f.rel) for f in found] == [("file", "deep/evil.pt")]
    proc = run_cli("scan", root, "--fail-on", "suspicious")
    assert proc.returncode == 1 and "evil.pt" in proc.stdout, (proc.stdout, proc.stderr)
    report = migrate(root, tmp_path / "dst", jobs=1)
    assert report.files["deep/evil.pt"]["status"] == "unsafe"
    assert not (tmp_path / "CANARY").exists()


# --------------------------------------------------------------------------- clean ends

def test_a_name_that_is_not_utf8_round_trips(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    torch.save({"w": torch.ones(2)}, os.fsdecode(os.path.join(os.fsencode(src), b"caf\xe9.pt")))
    _save(src / "z_later.pt")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "convert", "migrate", str(src), str(dst), "-q"], env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert b"internal error" not in proc.stderr and b"converted      2" in proc.stdout
    name = os.fsdecode(b"caf\xe9.pt")
    assert read_journal(dst).entries[name]["status"] == "converted"
    doc = json.loads((dst / REPORT_NAME).read_text())
    assert doc["files"][name]["status"] == "converted" and doc["files"]["z_later.pt"]["status"] == "converted"
    assert "caf\\udce9.pt" in (dst / REPORT_NAME).read_text()  # the documented escaping
    assert os.path.isfile(os.path.join(os.fsencode(dst), b"caf\xe9.pt", b"checkpoint.json"))
    from convert import load_checkpoint
    from convert.load import read_sidecar

    assert read_sidecar(dst / name)["source"]["name"] == name and load_checkpoint(dst / name)["w"].sum() == 2
    assert migrate(src, dst, jobs=1).files[name]["status"] == "skipped"


def test_status_reconciles_with_the_disk(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src / "good.pt")
    (src / "bad.pt").write_bytes(b"not a checkpoint")
    migrate(src, dst, jobs=1)
    assert (migrate_status(dst)["done"], migrate_status(dst)["failed"]) == (1, 1)
    (src / "bad.pt").unlink()
    with open(dst / JOURNAL_NAME, "a") as f:  # a hand-added line whose output does not exist
        f.write(json.dumps({"rel": "ghost.pt", "status": "converted", "verified": True, "output": "ghost.pt",
                            "kind": "file"}) + "\n")
    _save(src / "ghost.pt")
    status = migrate_status(dst)
    assert (status["done"], status["failed"], status["pending"]) == (1, 0, 1), status


def test_sigterm_ends_a_migrate_cleanly(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src / "a.pt")
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore", FAULT_ENV: f"a.pt:{marker}"}
    proc = subprocess.Popen([sys.executable, "-m", "convert", "migrate", str(src), str(dst), "-q", "-j", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "ckpt-convert: terminated", err
    assert not stale_temporaries(dst)
    assert migrate_status(dst)["running_pid"] is None
    assert migrate(src, dst, jobs=1).files["a.pt"]["status"] == "converted"


def test_an_output_installed_by_a_killed_run_is_replaced_not_refused(tmp_path):
    """Killed after the rename, before its journal line: the "started" line says the output is ours."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src / "a.pt", 1.0)
    migrate(src, dst, jobs=1)
    lines = (dst / JOURNAL_NAME).read_text().splitlines()
    lines = [ln for ln in lines if '"rel":"a.pt"' not in ln] + [json.dumps(
        {"rel": "a.pt", "status": "started", "output": "a.pt", "owner": True}, separators=(",", ":"))]
    (dst / JOURNAL_NAME).write_text("\n".join(lines) + "\n")
    time.sleep(0.01)
    _save(src / "a.pt", 4.0)  # changed since: the output is not adopted by its digest, only by the journal
    report = migrate(src, dst, jobs=1)
    assert report.files["a.pt"]["status"] == "converted", report.files
    from convert import load_checkpoint

    assert load_checkpoint(dst / "a.pt")["w"][0].item() == 4.0


@pytest.mark.parametrize("legacy_name", ["a", "a.pt.converted"])
def test_a_rerun_over_a_previous_release_destination_deletes_nothing(tmp_path, legacy_name):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _save(src / "a.pt")
    from convert import convert_checkpoint

    convert_checkpoint(src / "a.pt", dst / legacy_name)  # what the previous release wrote for a.pt
    with open(dst / JOURNAL_NAME, "w") as f:
        f.write(json.dumps({"ckpt_convert_journal": 2, "source": str(src.resolve())}) + "\n")
        f.write(json.dumps({"rel": "a.pt", "kind": "file", "status": "converted", "verified": True,
                            "output": legacy_name, "size": (src / "a.pt").stat().st_size,
                            "mtime_ns": (src / "a.pt").stat().st_mtime_ns}) + "\n")
    old = _tree(dst / legacy_name)
    report = migrate(src, dst, jobs=1)
    assert report.files["a.pt"]["status"] == "converted" and report.files["a.pt"]["output"] == "a.pt"
    assert _tree(dst / legacy_name) == old


# --------------------------------------------------------------------------- property: random trees, kills, siblings

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from convert.migrate.journal import KILL_ENV  # noqa: E402
from convert.migrate.walker import find_jobs  # noqa: E402
from convert.write.folder import FAULT_ENV as WRITE_FAULT_ENV  # noqa: E402
from tests.strategies import examples  # noqa: E402

_NAMES = st.sampled_from(["a", "b", "a.pt", "b.pth", "m.pt.converted"])
_PATHS = st.lists(_NAMES, min_size=1, max_size=3).map(lambda parts: "/".join(parts))
_ITEMS = st.lists(st.tuples(st.sampled_from(["source", "source", "unit", "user", "link_in", "link_out"]),
                            _PATHS, st.integers(0, 9)), min_size=1, max_size=7)
_KILLS = st.sampled_from([None, "journal:1", "journal:2", "after-sidecar", "before-rename"])


def _try(fn) -> None:
    try:
        fn()
    except (OSError, RuntimeError):  # a drawn path collides with one drawn before (torch.save: RuntimeError): left out
        pass


def _place(root: Path, src: Path, dst: Path, outside: Path, kind: str, rel: str, n: int) -> None:
    if kind == "source":
        path = src / (rel if rel.endswith((".pt", ".pth")) else rel + ".pt")
        _try(lambda: (path.parent.mkdir(parents=True, exist_ok=True), torch.save({"w": torch.full((2,), float(n))},
                                                                                  path)))
    elif kind == "unit":
        folder = src / rel / f"checkpoint-{n}"

        def unit() -> None:
            folder.mkdir(parents=True)
            (folder / "trainer_state.json").write_text(json.dumps({"step": n}))
            torch.save({"step": n}, folder / "optimizer.pt")
        _try(unit)
    elif kind == "user":
        path = dst / rel / f"user{n}.txt"
        _try(lambda: (path.parent.mkdir(parents=True, exist_ok=True), path.write_text(f"user {n}")))
    elif kind == "link_in":
        _try(lambda: (src / f"link{n}.pt").symlink_to(src / "a.pt"))  # dangling if a.pt is never drawn
    else:
        target = outside / f"o{n}.pt"
        _try(lambda: (target.parent.mkdir(parents=True, exist_ok=True), torch.save({"o": n}, target),
                      (src / f"out{n}.pt").symlink_to(target)))


def _blocked(dst: Path, users: dict[str, bytes], output: str) -> bool:
    """A user file sits at, under or above the job's output path: the job must fail, nothing touched."""
    return any(u == output or u.startswith(output + "/") or output.startswith(u + "/") for u in users)


@settings(max_examples=examples(15), deadline=None, suppress_health_check=list(HealthCheck))
@given(items=_ITEMS, kill=_KILLS, later=_ITEMS)
def test_property_random_trees_kills_and_siblings(tmp_path_factory, items, kill, later):
    root = tmp_path_factory.mktemp("prop")
    src, dst, outside = root / "src", root / "dst", root / "outside"
    src.mkdir()
    dst.mkdir()
    for item in items:
        _place(root, src, dst, outside, *item)
    users = _tree(dst)
    if kill:  # a first run killed -9 at a random point
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore",
               **({KILL_ENV: kill} if kill.startswith("journal") else {WRITE_FAULT_ENV: kill})}
        subprocess.run([sys.executable, "-m", "convert", "migrate", str(src), str(dst), "-q", "-j", "1"], env=env,
                       capture_output=True, timeout=300)
    else:
        migrate(src, dst, jobs=1)
    for item in later:  # siblings added to SRC after the first run (user files never appear in DST now)
        if item[0] != "user":
            _place(root, src, dst, outside, *item)
    migrate(src, dst, jobs=1)
    final = migrate(src, dst, jobs=1)

    assert {k: v for k, v in _tree(dst).items() if k in users} == users  # every user file byte-identical
    jobs, _ = find_jobs(src, None)
    from convert import load_checkpoint

    owned = []
    for job in jobs:
        entry = final.files[job.rel]
        assert entry["output"] == job.rel  # the stable name
        if _blocked(dst, users, job.rel):
            assert entry["status"] == "failed", entry
            continue
        assert entry["status"] == "skipped", entry  # converted once, by an earlier run: never again
        owned.append(job.rel)
        if job.kind == "file":
            assert torch.equal(load_checkpoint(dst / job.rel)["w"], torch.load(job.source)["w"])
    own_files = {JOURNAL_NAME, REPORT_NAME, ".ckpt-convert.lock"}
    for rel in _tree(dst):  # nothing else in DST: user files, migrate's own files, files of our outputs
        assert rel in users or rel in own_files or any(rel.startswith(o + "/") for o in owned), rel
    assert not stale_temporaries(dst)
    assert all(s["path"].startswith("out") for s in final.skipped_paths if "outside" in s["reason"])


def test_a_dcp_folder_with_rank_local_metadata_and_extras_is_one_unit(tmp_path):
    import shutil

    from tests.dcp_build import save_single

    src, dst = tmp_path / "src", tmp_path / "dst"
    step = save_single(src / "run" / "step-1")
    shutil.copyfile(step / ".metadata", step / "__0.metadata")  # torch's rank-local fallback, identical
    (step / "notes.txt").write_text("run notes")
    torch.save({"lr": 0.1}, step / "extra_state.pt")
    report = migrate(src, dst, jobs=1)
    assert list(report.files) == ["run/step-1"] and report.files["run/step-1"]["status"] == "converted", report.files
    out = dst / "run" / "step-1"
    assert (out / "checkpoint.json").is_file() and (out / "notes.txt").read_text() == "run notes"
    assert (out / "extra_state.pt" / "checkpoint.json").is_file() and not (out / "__0.metadata").exists()
    _no_pickles(dst)
