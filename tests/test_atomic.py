"""Atomic writes: a failure mid-write leaves the previous file intact and no temporary file behind."""

from __future__ import annotations

import json

import pytest
import torch

from pcl_bench.runtime import atomic
from pcl_bench.runtime.atomic import save_torch, write_json


def test_save_torch_roundtrip(tmp_path):
    """save_torch writes a loadable file and nothing else."""
    path = tmp_path / "ckpt.pth"
    save_torch({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path)["w"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_save_torch_failure_keeps_old_file(tmp_path, monkeypatch):
    """torch.save writing some bytes and then raising: old checkpoint intact, temp file removed."""
    path = tmp_path / "ckpt.pth"
    save_torch({"epoch": 1}, path)
    old_bytes = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_torch({"epoch": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert torch.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_save_torch_failure_creates_nothing(tmp_path, monkeypatch):
    """A failed first write leaves no target and no temp file."""
    def broken_save(obj, f):
        f.write(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_torch({}, tmp_path / "sub" / "new.pth")
    assert list((tmp_path / "sub").iterdir()) == []


def test_write_json_roundtrip(tmp_path):
    """write_json writes indented JSON with a final newline; non-JSON values are written with str()."""
    path = tmp_path / "m.json"
    write_json({"a": 1, "p": tmp_path}, path)
    text = path.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {"a": 1, "p": str(tmp_path)}


def test_write_json_failure_keeps_old_file(tmp_path, monkeypatch):
    """The bytes are written but fsync raises before the rename: old JSON intact, temp file removed."""
    path = tmp_path / "m.json"
    write_json({"v": 1}, path)

    def broken_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        write_json({"v": 2, "padding": "x" * 10000}, path)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
