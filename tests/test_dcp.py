"""torch.distributed.checkpoint (DCP) folders → safetensors, compared with PyTorch's own dcp_to_torch_save."""

from __future__ import annotations

import json
import math
import os
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from convert import api
from convert.cli import main as cli_main
from convert.compare import compare_trees
from convert.load import load_checkpoint
from convert.read.dcp_tiling import tiling_problem
from convert.write.chunked_source import Box, tensor_pieces
from tests.dcp_build import reference, save_single, save_two_ranks, write_chunked
from tests.helpers import SIDECAR, read_sidecar, run_cli, save


def _same(expected, got) -> None:
    assert compare_trees(expected, got) == []


# ------------------------------------------------------------------------------ real dcp.save folders

def test_single_process_save_converts_loads_and_verifies(tmp_path):
    src = save_single(tmp_path / "step-10")
    expected = reference(src, tmp_path)
    dst = tmp_path / "out" / "step-10"

    report = api.convert_checkpoint(src, dst)

    assert report.source_format == "torch-dcp"
    _same(expected, load_checkpoint(dst))
    assert list(load_checkpoint(dst)) == ["model", "optim", "step", "extra"]  # the order dcp_to_torch_save gives
    model = load_file(dst / "model.safetensors")  # the model state dict: plain safetensors
    assert sorted(model) == sorted(expected["model"])
    for key, tensor in expected["model"].items():
        assert model[key].dtype == tensor.dtype and torch.equal(model[key], tensor)
    assert api.verify_checkpoint(src, dst) == []
    _same(expected, api.read_checkpoint(src))
    source = read_sidecar(dst)["source"]
    assert [p["name"] for p in source["parts"]] == [".metadata", "__0_0.distcp"]
    assert source["sha256"] == source["parts"][0]["sha256"]


@pytest.fixture(scope="module")
def two_rank_folder(tmp_path_factory):
    return save_two_ranks(tmp_path_factory.mktemp("dcp2") / "step-4")


def test_two_gloo_ranks_with_sharded_dtensors(two_rank_folder, tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(two_rank_folder).read_metadata()
    chunks = {k: len(v.chunks) for k, v in metadata.state_dict_metadata.items() if hasattr(v, "chunks")}
    assert chunks["model.embed"] == chunks["model.proj"] == chunks["optim.state.embed.exp_avg"] == 2  # really split
    assert sorted(p.name for p in two_rank_folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    expected = reference(two_rank_folder, tmp_path)
    dst = tmp_path / "out"

    proc = run_cli("convert", two_rank_folder, dst)
    assert proc.returncode == 0, proc.stderr

    loaded = load_checkpoint(dst)
    _same(expected, loaded)
    assert loaded["model"]["proj"].dtype == torch.bfloat16 and loaded["model"]["scale"].shape == ()
    model = load_file(dst / "model.safetensors")  # (safetensors orders keys by their place in the file)
    assert sorted(model) == sorted(expected["model"])
    assert all(torch.equal(model[k], expected["model"][k]) for k in model)
    proc = run_cli("verify", two_rank_folder, dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_ranks_sharded_output_with_index(two_rank_folder, tmp_path):
    expected = reference(two_rank_folder, tmp_path)
    dst = tmp_path / "sharded"
    api.convert_checkpoint(two_rank_folder, dst, max_shard_size=300)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    merged = {}
    for shard in shards:
        merged.update(load_file(dst / shard))
    assert sorted(merged) == sorted(expected["model"])
    assert all(torch.equal(merged[k], expected["model"][k]) for k in merged)
    _same(expected, load_checkpoint(dst))
    assert api.verify_checkpoint(two_rank_folder, dst) == []


def _cli(capsys, *args) -> tuple[int, str, str]:
    """The command line, in this process (the subprocess path is covered by the two-rank test)."""
    capsys.readouterr()
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_convert_verify_inspect_scan(tmp_path, capsys):
    src = save_single(tmp_path / "run" / "step-1")
    dst = tmp_path / "out"
    code, out, err = _cli(capsys, "convert", src, dst)
    assert code == 0, err
    assert "torch-dcp" in out
    assert (dst / SIDECAR).is_file() and (dst / "model.safetensors").is_file()
    assert _cli(capsys, "verify", src, dst)[0] == 0
    code, out, err = _cli(capsys, "inspect", src)
    assert code == 0 and "exp_avg" in out, err
    code, out, err = _cli(capsys, "scan", src)
    assert code == 0, out + err


def test_verify_notices_a_changed_source(tmp_path):
    src = save_single(tmp_path / "step")
    dst = tmp_path / "out"
    api.convert_checkpoint(src, dst)
    data = bytearray((src / "__0_0.distcp").read_bytes())
    data[-200] ^= 0xFF  # inside the last chunk's archive, not in a tensor's bytes: still readable
    (src / "__0_0.distcp").write_bytes(bytes(data))
    try:
        diffs = api.verify_checkpoint(src, dst)
    except Exception:  # the flip may also break the archive: refused, which is just as good
        return
    assert diffs and "different files" in diffs[0]


# ------------------------------------------------------------------------------ chosen chunk layouts

def _grid(shape, splits):
    """Boxes of a grid: `splits[d]` cut points along dim d."""
    import itertools

    edges = [[0, *cuts, n] for n, cuts in zip(shape, splits)]
    spans = [list(itertools.pairwise(e)) for e in edges]
    return [(tuple(a for a, _ in combo), tuple(b - a for a, b in combo)) for combo in itertools.product(*spans)]


LAYOUTS = {
    "rows": (torch.randn(9, 4), [[4], []]),
    "cols_bf16": (torch.randn(5, 7).to(torch.bfloat16), [[], [3]]),
    "grid_int8": (torch.randint(-100, 100, (6, 8), dtype=torch.int8), [[2, 5], [4]]),
    "cube_f64": (torch.randn(3, 4, 5, dtype=torch.float64), [[1], [2], [1, 4]]),
    "complex": (torch.randn(4, 3, dtype=torch.complex128), [[], [1]]),
    "bools": (torch.rand(8) > 0.5, [[3, 6]]),
}


def test_box_layouts_match_dcp_to_torch_save(tmp_path):
    torch.manual_seed(3)
    tensors = {f"model.{name}": (t, _grid(t.shape, splits)) for name, (t, splits) in LAYOUTS.items()}
    tensors["model.scalar"] = (torch.tensor(1.5), [((), ())])
    tensors["model.empty"] = (torch.empty(0, 3), [((0, 0), (0, 3))])
    src = write_chunked(tmp_path / "ck", tensors, {"meta.epoch": 3, "meta.tags": ["a", "b"]}, ranks=3)
    expected = reference(src, tmp_path)
    dst = tmp_path / "out"
    api.convert_checkpoint(src, dst)
    _same(expected, load_checkpoint(dst))
    assert api.verify_checkpoint(src, dst) == []


@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3), data=st.data(),
       block=st.integers(1, 64), itemsize=st.sampled_from([1, 2, 4, 8]))
def test_pieces_reassemble_any_grid_in_bounded_pieces(shape, data, block, itemsize):
    splits = [sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=2))) if n > 1 else [] for n in shape]
    whole = torch.arange(math.prod(shape) * itemsize, dtype=torch.int64).remainder(251).to(torch.uint8)
    whole = whole.view(*shape, itemsize)
    boxes = []
    for offsets, sizes in _grid(tuple(shape), splits):
        part = whole[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))].contiguous()
        raw = bytes(7) + part.numpy().tobytes()  # the box's bytes start 7 bytes into its buffer
        boxes.append(Box(offsets, sizes, raw, 7, tuple(s // itemsize for s in part.stride()[:-1])))
    assert tiling_problem(tuple(shape), [(b.offsets, b.sizes) for b in boxes]) is None
    pieces = [bytes(p) for p in tensor_pieces(tuple(shape), itemsize, boxes, block_bytes=block)]
    assert b"".join(pieces) == whole.numpy().tobytes()
    assert all(len(p) <= max(block, itemsize) for p in pieces)  # bounded, whatever the tensor's size


def test_tiling_problems_are_named():
    assert "overlap" in tiling_problem((4, 4), [((0, 0), (3, 4)), ((2, 0), (2, 4))])
    assert "gap" in tiling_problem((4, 4), [((0, 0), (2, 4)), ((3, 0), (1, 4))])
    assert "outside" in tiling_problem((4, 4), [((0, 0), (5, 4))])
    assert "dims" in tiling_problem((4, 4), [((0,), (4,))])


# ------------------------------------------------------------------------------ hostile folders

@pytest.fixture
def convert_fails(tmp_path, capsys):
    """Convert with the command line; it must fail with exit `code`, one line on stderr, and no output."""
    def run(src, code):
        dst = tmp_path / "out"
        got, out, err = _cli(capsys, "convert", src, dst)
        assert got == code, (got, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, err
        assert not dst.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
        return err
    return run


def test_overlapping_chunks_are_refused(tmp_path, convert_fails):
    t = torch.randn(4, 4)
    src = write_chunked(tmp_path / "ck", {"w": (t, [((0, 0), (3, 4)), ((2, 0), (2, 4))])})
    err = convert_fails(src, 2)
    assert "'w'" in err and "overlap" in err


def test_a_gap_between_chunks_is_refused(tmp_path, convert_fails):
    t = torch.randn(4, 4)
    src = write_chunked(tmp_path / "ck", {"w": (t, [((0, 0), (2, 4)), ((3, 0), (1, 4))])})
    err = convert_fails(src, 2)
    assert "'w'" in err and "gap" in err


def test_a_chunk_past_the_end_of_its_file_is_refused(tmp_path, convert_fails):
    def longer(fqn, offsets, info):
        if fqn == "w" and offsets == (2, 0):
            info.length += 10_000
        return info

    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(4, 4), [((0, 0), (2, 4)), ((2, 0), (2, 4))])},
                        patch_storage=longer)
    err = convert_fails(src, 2)
    assert "'w' chunk at [2, 0]" in err and ".distcp" in err


def test_a_chunk_of_another_dtype_is_refused(tmp_path, convert_fails):
    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(4, 4), [((0, 0), (2, 4)), ((2, 0), (2, 4))])})
    md = pickle.loads((src / ".metadata").read_bytes())
    md.state_dict_metadata["w"].properties.dtype = torch.float64  # the archives hold float32
    (src / ".metadata").write_bytes(pickle.dumps(md))
    err = convert_fails(src, 2)
    assert "'w' chunk at [0, 0]" in err and "holds float32[2, 4]" in err and "float64" in err


def test_a_path_out_of_the_folder_is_refused(tmp_path, convert_fails):
    def escape(fqn, offsets, info):
        info.relative_path = "../elsewhere.distcp"
        return info

    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(2, 2), [((0, 0), (2, 2))])}, patch_storage=escape)
    assert "not a plain file name" in convert_fails(src, 2)


class _Gadget:
    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_a_gadget_in_metadata_is_refused(tmp_path, convert_fails):
    canary = tmp_path / "canary"

    def plant(raw: bytes) -> bytes:
        md = pickle.loads(raw)
        md.planner_data["w"] = _Gadget(canary)
        return pickle.dumps(md)

    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(2, 2), [((0, 0), (2, 2))])}, patch_metadata_bytes=plant)
    err = convert_fails(src, 1)
    assert "system" in err and not canary.exists()
    report = api.scan_checkpoint(src)
    assert not report.safe and "posix.system" in [f.name for f in report.unsafe]


def test_a_gadget_in_a_bytes_item_is_refused(tmp_path, convert_fails):
    canary = tmp_path / "canary"
    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(2, 2), [((0, 0), (2, 2))])}, {"cfg": _Gadget(canary)})
    err = convert_fails(src, 1)
    assert "system" in err and "cfg" in err and not canary.exists()


def test_only_the_dcp_metadata_classes_are_exempt(tmp_path, convert_fails):
    def other(raw: bytes) -> bytes:  # another torch.distributed name is still refused
        return raw.replace(b"\x8c\x14BytesStorageMetadata", b"\x8c\x14ProcessGroupWrapper_")

    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(2, 2), [((0, 0), (2, 2))])}, {"x": 1},
                        patch_metadata_bytes=other)
    assert b"ProcessGroupWrapper_" in (src / ".metadata").read_bytes()
    # not a known gadget since scan narrowed the torch.distributed prefix, and not a DCP data class either:
    # an inert record where metadata is expected, so the folder is refused as malformed
    convert_fails(src, 2)


def _chunk(md, fqn="w", i=0):
    return md.state_dict_metadata[fqn].chunks[i]


def _info(md, fqn="w"):
    return next(v for k, v in md.storage_data.items() if k.fqn == fqn)


MUTATIONS = {
    "offsets_not_a_size": lambda md: setattr(_chunk(md), "offsets", [0, 0]),
    "sizes_negative": lambda md: setattr(_chunk(md), "sizes", (-1, 2)),
    "shape_a_string": lambda md: setattr(md.state_dict_metadata["w"], "size", "2x2"),
    "chunks_a_dict": lambda md: setattr(md.state_dict_metadata["w"], "chunks", {}),
    "dtype_a_string": lambda md: setattr(md.state_dict_metadata["w"].properties, "dtype", "float32"),
    "storage_offset_negative": lambda md: setattr(_info(md), "offset", -5),
    "storage_length_a_float": lambda md: setattr(_info(md), "length", 10.0),
    "relative_path_an_int": lambda md: setattr(_info(md), "relative_path", 7),
    "relative_path_hidden": lambda md: setattr(_info(md), "relative_path", ".metadata"),
    "planner_path_a_list": lambda md: md.planner_data.__setitem__("w", ["w"]),
    "planner_path_negative_index": lambda md: md.planner_data.__setitem__("w", ("w", -1)),
    "planner_path_huge_index": lambda md: md.planner_data.__setitem__("w", ("w", 10**12)),
    "planner_paths_collide": lambda md: md.planner_data.__setitem__("x", ("w",)),
    "state_dict_metadata_a_list": lambda md: setattr(md, "state_dict_metadata", []),
    "a_storage_record_for_nothing": lambda md: md.storage_data.__setitem__(
        type(next(iter(md.storage_data)))("ghost", torch.Size([0, 0])), _info(md)),
    "missing_storage_record": lambda md: md.storage_data.pop(next(k for k in md.storage_data if k.fqn == "w")),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_malformed_metadata_fields_are_refused(tmp_path, convert_fails, mutation):
    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(2, 2), [((0, 0), (2, 2))])}, {"x": 1})
    md = pickle.loads((src / ".metadata").read_bytes())
    MUTATIONS[mutation](md)
    (src / ".metadata").write_bytes(pickle.dumps(md))
    convert_fails(src, 2)


def test_trailing_bytes_after_metadata_are_refused(tmp_path, convert_fails):
    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(2, 2), [((0, 0), (2, 2))])},
                        patch_metadata_bytes=lambda raw: raw + b"junk")
    assert "trailing" in convert_fails(src, 2)


def test_a_symlinked_rank_file_is_refused(tmp_path, convert_fails):
    src = write_chunked(tmp_path / "ck", {"w": (torch.randn(2, 2), [((0, 0), (2, 2))])}, ranks=1)
    (src / "__0_0.distcp").rename(tmp_path / "elsewhere.distcp")
    (src / "__0_0.distcp").symlink_to(tmp_path / "elsewhere.distcp")
    convert_fails(src, 2)


def test_garbage_metadata_is_malformed(tmp_path, convert_fails):
    src = tmp_path / "ck"
    src.mkdir()
    (src / ".metadata").write_bytes(pickle.dumps({"not": "metadata"}))
    assert "Metadata" in convert_fails(src, 2)


# ------------------------------------------------------------------------------ migrate

def test_migrate_converts_dcp_folders_as_units(tmp_path, capsys):
    runs = tmp_path / "runs"
    step = save_single(runs / "exp1" / "step-1")
    save({"w": torch.ones(2)}, runs / "exp1" / "final.pt", "zip")
    out = tmp_path / "safe-runs"
    code, stdout, err = _cli(capsys, "migrate", runs, out, "-j", "1", "--json")
    assert code == 0, stdout + err
    report = json.loads(stdout)
    assert report["files"]["exp1/step-1"]["status"] == "converted"
    assert report["files"]["exp1/step-1"]["kind"] == "dcp"
    _same(reference(step, tmp_path), load_checkpoint(out / "exp1" / "step-1"))
    assert (out / "exp1" / "final.pt" / SIDECAR).is_file()  # the stable name keeps the file name
    again = json.loads(_cli(capsys, "migrate", runs, out, "-j", "1", "--json")[1])
    assert again["files"]["exp1/step-1"]["status"] == "skipped"


def test_bytes_of_a_real_save_go_through_the_safe_reader(tmp_path):
    src = save_single(tmp_path / "s", {"cfg": {"betas": (0.9, 0.99), "name": "x"}, "w": torch.arange(3)})
    globals_used = api.scan_checkpoint(src).globals
    assert "torch._utils._rebuild_tensor_v2" in globals_used
    assert "torch.distributed.checkpoint.metadata.Metadata" in globals_used
    assert api.scan_checkpoint(src).safe
    _same(reference(src, tmp_path), api.read_checkpoint(src))
