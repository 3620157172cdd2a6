"""`scan`: the three verdicts on the whole corpus, DCP metadata, findings with offsets, JSON and SARIF output.

Malicious samples: every one that carries a payload is **unsafe**, in the category of what its payload does
(exec, file, network, process, nested-loader). Resource attacks (zip bombs, terabyte length fields, deep
nesting, out-of-range tensor views) carry no payload: the reader refuses them before allocating anything,
and the scanner reports them **unreadable** (exit 2) — it cannot tell a deliberate bomb from corruption, and
a CI gate fails on exit 2 as well. Legitimate whole-model and custom-class files are **suspicious**, plain
state dicts and the tutorial's general checkpoint **safe**, and so is a torch.distributed.checkpoint folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jsonschema
import pytest
import torch

from convert import read_checkpoint, scan_checkpoint
from convert.scan import SAFE, SUSPICIOUS, UNREADABLE, UNSAFE, scan_file
from convert.scan.output import RULE_CATEGORIES, to_json, to_sarif
from tests.security import corpus, harness, pk

SARIF_SCHEMA = Path(__file__).parent / "data" / "sarif-schema-2.1.0.json"
LEGIT_SUSPICIOUS = {"whole_model", "lightning", "numpy_generator"}  # custom classes (and numpy's RNG classes)


@pytest.fixture(scope="module")
def malicious(tmp_path_factory: pytest.TempPathFactory) -> list[corpus.Sample]:
    root = tmp_path_factory.mktemp("scan-corpus")
    return corpus.build_malicious(root / "samples", root / "canaries")


@pytest.fixture(scope="module")
def legit(tmp_path_factory: pytest.TempPathFactory) -> list[corpus.LegitSample]:
    return corpus.build_legit(tmp_path_factory.mktemp("scan-legit"))


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convert", *map(str, args)], env=harness.env(), capture_output=True,
                          text=True, timeout=300, cwd=cwd, stdin=subprocess.DEVNULL)


def test_every_malicious_sample_gets_its_verdict_and_category(malicious):
    wrong = {}
    for s in malicious:
        report = scan_file(s.path)
        categories = {f.category for f in report.findings}
        if s.category == "resource":
            if report.verdict != UNREADABLE or report.exit_code != 2 or not report.error:
                wrong[s.name] = (report.verdict, report.error)
            continue
        if report.verdict != UNSAFE or report.exit_code != 1:
            wrong[s.name] = (report.verdict, [str(f) for f in report.findings])
        elif s.attack not in categories:
            wrong[s.name] = (s.attack, categories)
        elif s.named and s.named not in " ".join(f.name for f in report.unsafe) and s.named != "TorchScript":
            wrong[s.name] = ("does not name", s.named, [f.name for f in report.unsafe])
    assert not wrong, wrong
    assert {s.attack for s in malicious} == set(corpus.ATTACKS)


def test_findings_say_where_and_why(malicious):
    by_name = {s.name: s for s in malicious}
    zipped = scan_file(by_name["zip_plain"].path)
    (finding,) = zipped.unsafe
    assert (finding.name, finding.category, finding.member, finding.opcode) == ("os.system", "exec", "archive/data.pkl",
                                                                                "GLOBAL")
    data = by_name["zip_plain"].path.read_bytes()
    # the pickle member is stored: the finding's file offset is the GLOBAL opcode itself
    assert data[finding.file_offset:finding.file_offset + finding.length] == b"cos\nsystem\n"
    assert "runs code" in finding.reason
    deflated = scan_file(by_name["zip_deflated_pickle"].path).unsafe[0]
    assert deflated.offset is not None and deflated.file_offset is None  # compressed: only the stream offset
    # a payload after STOP, and one behind a corrupted stream, are found with their offsets
    trailing = scan_file(by_name["trailing_after_stop"].path).unsafe[0]
    assert trailing.offset > by_name["trailing_after_stop"].path.read_bytes().index(b".")
    broken = scan_file(by_name["payload_then_broken"].path)
    assert broken.verdict == UNSAFE and broken.unsafe[0].name == "os.system"
    memo = scan_file(by_name["stack_global_memo"].path).unsafe[0]
    assert (memo.name, memo.opcode) == ("posix.system", "STACK_GLOBAL")


def test_legitimate_files_are_safe_or_suspicious(legit):
    verdicts = {s.name: scan_file(s.path) for s in legit}
    assert {k for k, r in verdicts.items() if r.verdict == SUSPICIOUS} == LEGIT_SUSPICIOUS
    assert {k for k, r in verdicts.items() if r.verdict == SAFE} == {s.name for s in legit} - LEGIT_SUSPICIOUS
    whole = verdicts["whole_model"]
    assert "tests.security.corpus.TinyNet" in [f.name for f in whole.suspicious]
    assert all(f.category == "custom-class" and f.offset is not None for f in whole.suspicious)
    assert whole.exit_code == 0
    for name in ("bare_state_dict", "general_checkpoint", "legacy_state_dict", "hf_pytorch_model"):
        assert verdicts[name].findings == [], name


def test_scan_checkpoint_api_keeps_its_contract(legit, malicious, tmp_path):
    sd = next(s for s in legit if s.name == "bare_state_dict")
    report = scan_checkpoint(sd.path)
    assert report.safe and report.unsafe == [] and report.format == "torch-zip"
    resource = next(s for s in malicious if s.name == "huge_memo_index")
    with pytest.raises(Exception) as info:  # unreadable files raise the reader's error, as before
        scan_checkpoint(resource.path)
    assert info.value.exit_code == 2


def _dcp_folder(tmp_path: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    state = {"model": {"w": torch.randn(3, 4), "b": torch.zeros(4)}, "step": 7, "note": "run-1",
             "extra": {"lr": 0.1, "t": torch.arange(6).reshape(2, 3)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... assuming a single process"
        dcp.save(state, checkpoint_id=folder)
    return folder


def test_dcp_metadata_scans_safe_and_reads_as_inert_records(tmp_path):
    folder = _dcp_folder(tmp_path)
    metadata = folder / ".metadata"
    report = scan_file(metadata)
    assert report.verdict == SAFE, [str(f) for f in report.findings]
    assert "torch.distributed.checkpoint.metadata.Metadata" in report.globals
    assert any(g.startswith("torch.distributed.checkpoint.metadata.TensorStorageMetadata") for g in report.globals)
    for data_file in folder.glob("*.distcp"):
        assert scan_file(data_file).verdict == SAFE
    tree = read_checkpoint(metadata)  # the converter reads it too: its classes are inert records, nothing refused
    assert type(tree).__name__ == "ObjectRecord" and tree.qualname.endswith(".Metadata")
    proc = run_cli("scan", metadata)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SAFE" in proc.stdout


def test_dangerous_torch_distributed_callables_stay_unsafe(tmp_path):
    for module, name, category in [("torch.distributed.rpc", "rpc_sync", "network"),
                                   ("torch.distributed.elastic.agent.server.api", "SimpleElasticAgent", "process"),
                                   ("torch.distributed.run", "main", "process"),
                                   ("torch.distributed", "broadcast_object_list", "nested-loader")]:
        path = tmp_path / f"{module}.{name}.pkl"
        path.write_bytes(pk.proto(pk.call(pk.glob(module, name), pk.text("x"))))
        report = scan_file(path)
        assert report.verdict == UNSAFE and report.unsafe[0].category == category, (module, name, report.findings)


# ------------------------------------------------------------------------------------- outputs

def test_sarif_validates_against_the_sarif_2_1_0_schema(malicious, legit):
    picked = [s.path for s in malicious if s.name in ("zip_plain", "zip_deflated_pickle", "socket_bind", "os_exit",
                                                      "huge_memo_index", "pickle_loads", "gzip_open_write")]
    picked += [s.path for s in legit if s.name in ("whole_model", "bare_state_dict")]
    reports = [scan_file(p) for p in picked]
    log = json.loads(json.dumps(to_sarif(reports)))
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft4Validator(schema).iter_errors(log), key=str)
    assert not errors, [e.message for e in errors[:5]]
    run = log["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [f"ckpt-scan/{c}" for c in RULE_CATEGORIES]
    levels = {r["level"] for r in run["results"]}
    assert levels == {"error", "warning", "note"}
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"]
        assert location["region"]["startLine"] == 1
    stored = next(r for r in run["results"] if "zip_plain" in r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])
    region = stored["locations"][0]["physicalLocation"]["region"]
    data = next(s for s in malicious if s.name == "zip_plain").path.read_bytes()
    assert data[region["byteOffset"]:region["byteOffset"] + region["byteLength"]] == b"cos\nsystem\n"
    assert "byteOffset" not in next(r for r in run["results"] if "deflated" in r["message"]["text"])[
        "locations"][0]["physicalLocation"]["region"]


def test_json_has_one_object_per_file_with_its_findings(malicious, legit):
    paths = [s.path for s in malicious if s.name in ("os_system", "deep_nesting")] + \
            [s.path for s in legit if s.name == "whole_model"]
    doc = to_json([scan_file(p) for p in paths])
    assert [f["path"] for f in doc["files"]] == [str(p) for p in paths]
    assert [f["verdict"] for f in doc["files"]] == [UNSAFE, UNREADABLE, SUSPICIOUS]
    finding = doc["files"][0]["findings"][0]
    assert finding == {"global": "os.system", "category": "exec", "verdict": "unsafe", "reason": finding["reason"],
                       "member": None, "offset": 2, "file_offset": 2, "length": 11, "opcode": "GLOBAL"}
    assert doc["summary"] == {"files": 3, "safe": 0, "suspicious": 1, "unsafe": 1, "unreadable": 1, "skipped": 0}
    assert doc["exit_code"] == 1


def cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """The real command line, in-process (a subprocess per call costs seconds of torch import)."""
    from convert.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_exit_codes_and_fail_on(malicious, legit, tmp_path, capsys):
    whole = next(s.path for s in legit if s.name == "whole_model")
    bare = next(s.path for s in legit if s.name == "bare_state_dict")
    evil = next(s.path for s in malicious if s.name == "gzip_open_write")
    bomb = next(s.path for s in malicious if s.name == "zip_bomb_declared_terabyte")
    assert cli(capsys, "scan", bare)[0] == 0
    code, out, _ = cli(capsys, "scan", whole)
    assert code == 0 and "SUSPICIOUS" in out and "TinyNet" in out
    assert cli(capsys, "scan", "--fail-on", "suspicious", whole)[0] == 1
    code, out, _ = cli(capsys, "scan", evil)
    assert code == 1 and "gzip.open" in out and "[file]" in out, out
    code, out, err = cli(capsys, "scan", bomb)
    assert code == 2 and "UNREADABLE" in out and "Traceback" not in err
    assert cli(capsys, "scan", bomb, evil)[0] == 1  # unsafe outranks unreadable
    out_file = tmp_path / "report.sarif"
    code, out, _ = cli(capsys, "scan", "--format", "sarif", "-o", out_file, evil, whole)
    assert code == 1 and out == ""
    assert {r["level"] for r in json.loads(out_file.read_text())["runs"][0]["results"]} == {"error", "warning"}
    code, out, _ = cli(capsys, "scan", "--format", "json", bare, whole)
    assert code == 0 and [f["verdict"] for f in json.loads(out)["files"]] == [SAFE, SUSPICIOUS]
    code, _, err = cli(capsys, "scan", tmp_path / "missing.pt")
    assert code == 2 and err.count("\n") == 1
    proc = run_cli("scan", evil)  # and once as a real process: stdout, exit status
    assert proc.returncode == 1 and "unsafe [file] gzip.open" in proc.stdout, proc.stdout + proc.stderr


def test_scan_folder_in_parallel_with_summary(malicious, legit, tmp_path, capsys):
    folder = tmp_path / "zoo"
    folder.mkdir()
    for s in legit:
        os.link(s.path, folder / s.path.name)
    for s in malicious:
        if s.name in ("os_system", "socket_bind", "huge_memo_index"):
            os.link(s.path, folder / s.path.name)
    (folder / "README.md").write_text("not a checkpoint\n")
    code, out, err = cli(capsys, "scan", "-j", "2", "--format", "json", folder)  # >= 8 files: a pool of 2 workers
    doc = json.loads(out)
    assert code == 1, err
    assert doc["summary"] == {"files": len(legit) + 3, "safe": len(legit) - 3, "suspicious": 3, "unsafe": 2,
                              "unreadable": 1, "skipped": 1}  # README.md: skipped, and counted (issue 24)
    code, out, _ = cli(capsys, "scan", "-j", "1", folder)
    assert out.strip().splitlines()[-1] == (f"scanned {len(legit) + 3} files: {len(legit) - 3} safe, "
                                            "3 suspicious, 2 unsafe, 1 unreadable, 1 skipped (not checkpoints)")
