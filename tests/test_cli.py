"""The ckpt-convert command line: convert / verify / inspect / scan / demo and their exit codes."""

from __future__ import annotations

import collections
import os
import re

import torch

from tests.helpers import (
    SIDECAR,
    assert_one_line_error,
    handmade_os_system_pickle,
    read_sidecar,
    run_cli,
    save,
    sha256_file,
)


def _odd_state_dict():
    torch.manual_seed(0)
    sd = collections.OrderedDict()
    sd["encoder.weight_q"] = torch.randn(7, 11)
    sd["encoder.bias_q"] = torch.randn(11, dtype=torch.float64)
    sd["head.scale_h"] = torch.ones(13, dtype=torch.bfloat16)
    return sd


def test_help():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for cmd in ("convert", "verify", "inspect", "scan", "demo"):
        assert cmd in proc.stdout, cmd


def test_no_arguments_is_an_error():
    proc = run_cli()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr


def test_convert_verify_inspect(tmp_path, src_dir):
    sd = _odd_state_dict()
    ckpt = {"epoch": 2, "model_state_dict": sd, "extra": torch.arange(5, dtype=torch.int16)}
    src = save(ckpt, src_dir / "ckpt.pth", "zip")
    dst = tmp_path / "out"
    digest = sha256_file(src)

    proc = run_cli("convert", src, dst)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (dst / SIDECAR).is_file()
    assert (dst / "model_state_dict.safetensors").is_file()
    assert read_sidecar(dst)["source"]["sha256"] == digest
    assert sha256_file(src) == digest

    proc = run_cli("verify", src, dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    proc = run_cli("inspect", dst)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for key in ("epoch", "model_state_dict", "encoder.weight_q", "encoder.bias_q", "head.scale_h", "extra"):
        assert key in out, key
    low = out.lower()
    assert "float32" in low or "f32" in low
    assert "float64" in low or "f64" in low
    assert "bfloat16" in low or "bf16" in low
    assert re.search(r"7\D{1,4}11", out), out  # the shape (7, 11) in some notation
    assert re.search(r"\b13\b", out)


def test_verify_reports_differences(tmp_path, src_dir):
    sd = _odd_state_dict()
    src = save(sd, src_dir / "a.pt", "zip")
    changed = collections.OrderedDict((k, v.clone()) for k, v in sd.items())
    changed["encoder.weight_q"][3, 4] += 1
    other = save(changed, src_dir / "b.pt", "zip")
    dst = tmp_path / "out"
    assert run_cli("convert", other, dst).returncode == 0
    proc = run_cli("verify", src, dst)
    assert proc.returncode != 0
    assert "encoder.weight_q" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_convert_refuses_existing_destination_then_overwrites(tmp_path, src_dir):
    src = save(_odd_state_dict(), src_dir / "a.pt", "zip")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("keep")
    proc = run_cli("convert", src, dst)
    assert_one_line_error(proc, 2)
    assert os.listdir(dst) == ["keep.txt"]
    proc = run_cli("convert", src, dst, "--overwrite")  # a folder of the user's files: never replaced
    assert_one_line_error(proc, 2)
    assert "keep.txt" in proc.stderr and os.listdir(dst) == ["keep.txt"]
    (dst / "keep.txt").unlink()
    dst.rmdir()
    assert run_cli("convert", src, dst).returncode == 0
    proc = run_cli("convert", src, dst, "--overwrite")  # a previous output: replaced
    assert proc.returncode == 0, proc.stderr
    assert (dst / "model.safetensors").is_file()


def test_scan_exit_codes(tmp_path, src_dir):
    clean = save(_odd_state_dict(), src_dir / "clean.pt", "zip")
    proc = run_cli("scan", clean)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # (scan of an unsafe file, exit 1: tests/test_errors.py::test_several_unsafe_globals_are_all_named)

    bad = src_dir / "bad.pt"
    bad.write_bytes(clean.read_bytes()[:100])
    proc = run_cli("scan", bad)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_scan_of_a_folder_in_workers_gives_the_reports_of_one_process(tmp_path, src_dir):
    # 12 files: the worker pool (forked, as scan's CLI never imports torch); its reports must be -j 1's
    for i in range(11):
        save({"w": torch.full((4,), float(i)), "step": i}, src_dir / f"c{i:02d}.pt", "zip" if i % 2 else "legacy")
    canary = tmp_path / "canary"
    (src_dir / "evil.pt").write_bytes(handmade_os_system_pickle(canary))
    pooled = run_cli("scan", src_dir)
    alone = run_cli("scan", "-j", "1", src_dir)
    assert pooled.returncode == alone.returncode == 1, pooled.stdout + pooled.stderr
    assert pooled.stdout == alone.stdout and "os.system" in pooled.stdout
    assert pooled.stderr == alone.stderr == ""
    assert not canary.exists()


def test_demo(tmp_path):
    before = set(os.listdir(tmp_path))
    proc = run_cli("demo", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) >= 3, proc.stdout
    assert set(os.listdir(tmp_path)) == before  # builds in its own temp dir


def test_console_script_entry_point_is_declared():
    # The console script name is part of the interface; the package must map it to a callable.
    import importlib.metadata as md

    try:
        eps = md.entry_points(group="console_scripts")
    except Exception:  # pragma: no cover
        eps = []
    names = {ep.name: ep.value for ep in eps}
    if "ckpt-convert" in names:  # installed (pip install -e .): check it points into `convert`
        assert names["ckpt-convert"].startswith("convert")
    else:  # not installed in this environment: the declaration must be in pyproject.toml
        from tests.helpers import REPO_ROOT

        text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
        assert re.search(r'''^\s*["']?ckpt-convert["']?\s*=\s*["']convert''', text, re.M), "no console script"
