"""The model builders' folder helper: a model folder appears complete or not at all."""
from __future__ import annotations

import pytest

from experiments.models.folder import sha256, staged, write_json


def test_staged_folder_appears_only_when_complete(tmp_path):
    out = tmp_path / "models" / "m"
    with staged(out) as tmp:
        (tmp / "config.json").write_text("{}")
        assert not out.exists()                      # nothing visible while it is being written
    assert (out / "config.json").read_text() == "{}" and list(tmp_path.glob("models/.m.tmp-*")) == []


def test_failed_build_leaves_nothing(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(RuntimeError, match="conversion"):
        with staged(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("conversion failed")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_non_empty_target_is_refused_and_empty_one_replaced(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        with staged(full):
            pass
    assert (full / "x").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged(empty) as tmp:
        (tmp / "a").write_text("1")
    assert (empty / "a").read_text() == "1"


def test_json_and_digest_are_stable(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(a, {"b": 1, "a": [1, "é"]})
    write_json(b, {"a": [1, "é"], "b": 1})
    assert a.read_bytes() == b.read_bytes() and sha256(a) == sha256(b) and len(sha256(a)) == 64
