"""Sidecar format versions and the one codec: version-1 folders still load; every tag is in the schema.

tests/fixtures/v1/folder was written by the format-version-1 converter (tests/fixtures/v1/make_v1_fixture.py,
run at commit 3b432b2) from tests/fixtures/v1/source.pt; it is committed, never regenerated.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from convert import (
    MalformedCheckpoint,
    compare_trees,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from convert.sidecar.codec import MODIFIERS, TAGS, Decoder
from convert.sidecar.schema import FORMAT_VERSION, READABLE_VERSIONS, schema, schema_tags
from tests.helpers import read_sidecar, run_cli, validate_sidecar

V1 = Path(__file__).resolve().parent / "fixtures" / "v1"


def test_version_1_folder_still_loads_and_verifies():
    sidecar = read_sidecar(V1 / "folder")
    assert sidecar["format_version"] == 1
    validate_sidecar(sidecar)
    loaded = load_checkpoint(V1 / "folder")
    assert compare_trees(read_checkpoint(V1 / "source.pt"), loaded) == []
    assert verify_checkpoint(V1 / "source.pt", V1 / "folder") == []
    model = loaded["model"]
    assert model["dec.weight"].untyped_storage().data_ptr() == model["enc.weight"].untyped_storage().data_ptr()
    assert loaded["extras"]["record"].qualname == "fractions.Fraction"


def test_version_1_folder_inspects(tmp_path):
    proc = run_cli("inspect", V1 / "folder")
    assert proc.returncode == 0, proc.stderr
    assert "inert record of fractions.Fraction" in proc.stdout and "dtype float16" in proc.stdout


def test_versions_the_schema_accepts():
    assert FORMAT_VERSION == 2
    assert schema()["properties"]["format_version"]["enum"] == list(READABLE_VERSIONS)


def test_unknown_version_is_refused(tmp_path):
    folder = tmp_path / "v3"
    shutil.copytree(V1 / "folder", folder)
    path = folder / "checkpoint.json"
    path.write_text(path.read_text().replace('"format_version": 1', '"format_version": 3', 1))
    with pytest.raises(MalformedCheckpoint, match="format_version"):
        load_checkpoint(folder)


def test_codec_registry_and_schema_list_the_same_tags():
    assert set(TAGS) == schema_tags()
    value_alternatives = schema()["$defs"]["value"]["anyOf"]
    allowed_modifiers = {name for alt in value_alternatives for name in alt.get("properties", {})
                         if name.startswith("$") and name not in TAGS}
    assert allowed_modifiers == set(MODIFIERS)


@pytest.mark.parametrize("bad", [
    {"$ref": 0},  # nothing defined
    {"$list": [{"$ref": 1}], "$id": 0},  # points forward
    [{"$list": [], "$id": 0}, {"$list": [], "$id": 0}],  # defined twice
    {"$dict": [[{"$list": [], "$id": 0}, 1]]},  # unhashable key
    {"$tuple": [], "$nope": 1},  # unknown tag
    {"$id": 0},  # modifier without a tag
])
def test_decoder_refuses_broken_references(bad):
    with pytest.raises(MalformedCheckpoint):
        Decoder().value(bad)


def test_decoder_reads_a_mapping_key_before_its_value():
    """The encoder writes a key before its value, so a value may refer to a tuple the key defines
    ({t: t} with a shared tuple t): the decoder read the value first and refused the folder."""
    out = Decoder().value({"$dict": [[{"$tuple": [1, 2], "$id": 0}, {"$ref": 0}]]})
    (key, value), = out.items()
    assert key == (1, 2) and value is key


def test_decoder_is_iterative_to_its_depth_limit_and_refuses_one_more():
    from convert.sidecar.codec import DECODE_MAX_DEPTH

    node: object = [0]
    for _ in range(DECODE_MAX_DEPTH - 1):  # plain lists and tagged tuples: value 0 sits at the limit
        node = [node] if isinstance(node, dict) else {"$tuple": [node]}
    value = Decoder().value(node)
    for _ in range(DECODE_MAX_DEPTH):
        assert isinstance(value, (list, tuple)) and len(value) == 1
        value = value[0]
    assert value == 0
    with pytest.raises(MalformedCheckpoint, match="sidecar nests too deeply"):
        Decoder().value([node])


def test_a_dict_whose_value_is_its_own_tuple_key_round_trips(tmp_path):
    t = (1, 2)
    save_checkpoint({"m": {t: t}}, tmp_path / "out")
    (key, value), = load_checkpoint(tmp_path / "out")["m"].items()
    assert key == t and value is key
