"""Durable atomic writes: file contents and the renames that publish them are fsynced."""

from __future__ import annotations

import os
import stat

from quantcl import _io


def _record_fsyncs(monkeypatch):
    synced: list[tuple[str, bool]] = []
    real = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(st.st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def test_atomic_write_syncs_the_file_then_its_directory(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    _io.atomic_write_bytes(tmp_path / "a" / "state.json", b"{}")
    assert (tmp_path / "a" / "state.json").read_bytes() == b"{}"
    assert synced[-1] == (str(tmp_path / "a"), True)  # the rename is made durable last
    assert any(not is_dir and ".state.json." in path for path, is_dir in synced[:-1])  # the temp file


def test_replacing_a_directory_syncs_every_file_written_into_it(tmp_path, monkeypatch):
    tmp = tmp_path / "stage-001.tmp"
    (tmp / "adapter").mkdir(parents=True)
    (tmp / "adapter" / "adapter_model.safetensors").write_bytes(b"x" * 10)  # as save_pretrained would
    (tmp / "plugins").mkdir()
    (tmp / "plugins" / "state.json").write_bytes(b"{}")
    synced = _record_fsyncs(monkeypatch)
    _io.atomic_replace_dir(tmp, tmp_path / "stage-001")
    files = {os.path.basename(p) for p, is_dir in synced if not is_dir}
    assert files == {"adapter_model.safetensors", "state.json"}
    assert (str(tmp_path), True) in synced  # the parent, after the rename
    assert (tmp_path / "stage-001" / "adapter" / "adapter_model.safetensors").read_bytes() == b"x" * 10
    assert not tmp.exists()
