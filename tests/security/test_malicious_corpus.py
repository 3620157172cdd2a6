"""Every malicious sample is live (it runs its canary when loaded naively) and ckpt-convert refuses it
without running anything: exit 1 or 2 with one line, no audit event, bounded memory, no output, fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from convert import scan_checkpoint
from tests.security import corpus, harness

# What the issue asks the corpus to cover, by sample name (each is a separate technique).
REQUIRED = {
    "direct": ["builtins_eval", "builtins_exec", "builtins_compile", "builtins_open", "builtins_getattr",
               "builtins_import", "os_system", "posix_system", "subprocess_popen", "subprocess_run", "pty_spawn",
               "runpy_run_code", "sys_exit"],
    "indirection": ["pkgutil_resolve_name", "importlib_import_module", "operator_attrgetter", "operator_methodcaller",
                    "operator_itemgetter_chain", "functools_partial", "copyreg_ext", "stack_global_dotted",
                    "module_dunder_builtins", "rebuild_from_type_v2"],
    "stdlib": ["timeit", "cprofile_run", "profile_run", "bdb_run", "pdb_bdb_run", "code_runcode", "idlelib_calltip",
               "pydoc_pipepager", "uuid_get_command_stdout", "ctypes_pythonapi", "marshal_loads", "types_codetype",
               "numpy_f2py_myeval", "numpy_testing_runstring", "torch_collect_env_run", "torch_inductor_codecache",
               "torch_hub_load", "pip_main", "ensurepip_run_pip", "venv_create"],
    "nested": ["pickle_loads", "_pickle_loads", "torch_load", "storage_load_from_bytes"],
    "opcode": ["proto0_inst", "proto0_obj", "proto0_string_reduce", "stack_global_memo", "obj_pop", "lying_frame",
               "payload_then_broken", "trailing_after_stop", "concatenated_pickles"],
    "container": ["raw_pickle_bin", "raw_pickle_pt", "zip_bad_crc", "zip_odd_flag_bits", "zip_local_name_differs",
                  "zip_duplicate_members", "zip_unexpected_folder", "torchscript_zip", "legacy_tar", "gzip_wrapper",
                  "sevenzip_wrapper"],
    "resource": ["numel_beyond_storage", "offset_outside_storage", "stride_outside_storage", "shape_product_overflow",
                 "huge_memo_index", "deep_nesting", "zip_bomb_lying_size",
                 "zip_bomb_declared_terabyte", "frame_terabytes"],
}
PER_SAMPLE_SECONDS = 3.0  # after interpreter start-up, which the driver pays once
MAX_RSS_MB = 1500


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[corpus.Sample], Path, Path]:
    root = tmp_path_factory.mktemp("security")
    canaries = root / "canaries"
    return corpus.build_malicious(root / "samples", canaries), canaries, root


@pytest.fixture(scope="module")
def results(built: tuple) -> dict[str, dict]:
    samples, _, root = built
    out = root / "outputs"
    jobs = [{"name": s.name, "src": str(s.path), "dst": str(out / s.name / "converted")} for s in samples]
    return harness.run_driver(jobs, root)


def test_corpus_covers_the_required_techniques(built):
    samples, _, _ = built
    names = [s.name for s in samples]
    assert len(set(names)) == len(names)
    by_category = {c: {s.name for s in samples if s.category == c} for c in corpus.CATEGORIES}
    for category, required in REQUIRED.items():
        missing = set(required) - by_category[category]
        assert not missing, (category, missing)
    live = [s for s in samples if s.trigger]
    assert len(live) >= 40, len(live)
    assert all(s.expected in (1, 2) for s in samples)


def test_every_live_sample_really_runs_its_canary(tmp_path):
    """Loaded naively (pickle.load & co.) in throw-away children, each payload fires: the corpus is real.

    A separate copy of the corpus is built for this, with its own canary folder."""
    canaries = tmp_path / "canaries"
    live = [s for s in corpus.build_malicious(tmp_path / "samples", canaries) if s.trigger]
    spec = [{"name": s.name, "path": str(s.path), "trigger": s.trigger, "canary": str(canaries / s.name),
             "payload_hex": s.payload.hex() if s.payload else None, "exits": s.exits} for s in live]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "tests.security.detonate", str(tmp_path / "spec.json")],
                          env=harness.env(), capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(outcome) == {s.name for s in live}
    silent = {name: how for name, how in outcome.items() if how != "fired"}
    assert not silent, silent


def test_nothing_runs_and_every_sample_is_refused(built, results):
    samples, canaries, root = built
    for s in samples:
        r = results[s.name]
        where = f"{s.name}: {r}"
        assert r["exit"] == s.expected, where
        lines = r["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ckpt-convert: "), where
        assert "Traceback" not in r["stderr"] and "internal error" not in r["stderr"], where
        label = "refused" if s.expected == 1 else ("malformed", "unsupported")
        assert lines[0].split(": ")[1] in label, where
        if s.named:
            assert s.named in lines[0], where
        assert r["events"] == [], where  # no import/exec/compile/process/socket/ctypes/find_class/write
        assert r["leftovers"] == [], where  # no output folder, no temporary folder
        assert r["seconds"] < PER_SAMPLE_SECONDS, where
    assert max(r["maxrss_mb"] for r in results.values()) < MAX_RSS_MB
    assert not any(canaries.iterdir())
    assert not (root / "outputs").exists() or all(not any(d.iterdir()) for d in (root / "outputs").iterdir())


def test_scan_flags_every_unsafe_sample(built):
    samples, canaries, _ = built
    for s in samples:
        if s.expected == 1:
            report = scan_checkpoint(s.path)
            assert report.unsafe, s.name
    assert not any(canaries.iterdir())


@pytest.mark.parametrize("category", corpus.CATEGORIES)
def test_real_cli_one_clear_line(built, tmp_path, category):
    """The real `python -m convert convert`, memory-limited: one line on stderr, the right exit code."""
    samples, canaries, _ = built
    sample = next(s for s in samples if s.category == category)
    proc = harness.run_limited(["-m", "convert", "convert", str(sample.path), str(tmp_path / "out")], timeout=60,
                               cwd=tmp_path)
    assert proc.returncode == sample.expected, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    assert not any(canaries.iterdir())


def test_graphs_convert_with_output_linear_in_the_input(tmp_path):
    """Self-reference and "billion laughs" are graphs, not attacks: accepted, fast, and written once each
    (references, never expanded), so the output stays proportional to the input."""
    from convert import load_checkpoint

    samples = corpus.build_graphs(tmp_path / "graphs")
    jobs = [{"name": s.name, "src": str(s.path), "dst": str(tmp_path / "out" / s.name)} for s in samples]
    results = harness.run_driver(jobs, tmp_path)
    for s in samples:
        r = results[s.name]
        assert r["exit"] == 0 and r["stderr"] == "", (s.name, r)
        assert r["seconds"] < PER_SAMPLE_SECONDS, (s.name, r)
        written = sum(p.stat().st_size for p in (tmp_path / "out" / s.name).iterdir())
        assert written <= 40 * s.path.stat().st_size + (16 << 10), (s.name, written, s.path.stat().st_size)
    assert max(r["maxrss_mb"] for r in results.values()) < MAX_RSS_MB
    loop = load_checkpoint(tmp_path / "out" / "self_reference")
    assert loop[0] is loop
    laughs = load_checkpoint(tmp_path / "out" / "billion_laughs")
    for _ in range(58):
        assert laughs[0] is laughs[1]
        laughs = laughs[0]
    wide = load_checkpoint(tmp_path / "out" / "wide_laughs")
    assert len(wide) == 20_000 and all(x is wide[0] for x in wide) and wide[0] == list(range(100))


def test_legitimate_corpus_converts(tmp_path):
    """The other half of the comparison: nothing legitimate is refused."""
    legit = corpus.build_legit(tmp_path / "legit")
    jobs = [{"name": s.name, "src": str(s.path), "dst": str(tmp_path / "out" / s.name)} for s in legit]
    results = harness.run_driver(jobs, tmp_path)
    refused = {name: r["stderr"] for name, r in results.items() if r["exit"] != 0}
    assert not refused, refused
    assert {s.kind for s in legit} >= {"bare", "general", "whole-model", "legacy", "lightning", "numpy", "rng"}
