"""quantcl.studies.pages: generated blocks in pages, and the sweep timing study scripts publish."""

from __future__ import annotations

import json
import os

import pytest

from quantcl.studies import pages


def test_splice_replaces_only_the_named_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- a:begin -->\nold a\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nold b\n<!-- b:end -->\n")
    pages.splice(page, "a", "  new a\n")
    assert page.read_text() == ("intro\n<!-- a:begin -->\nnew a\n<!-- a:end -->\nmiddle\n"
                                "<!-- b:begin -->\nold b\n<!-- b:end -->\n")
    assert pages.block(page, "a") == "new a" and pages.block(page, "b") == "old b"
    with pytest.raises(SystemExit, match="no <!-- c:begin --> ... <!-- c:end --> block"):
        pages.splice(page, "c", "x")


class _FakeSweep:
    """What sweep_timing reads of a Sweep: status(), run_dir(name) and output_dir."""

    def __init__(self, root, names):
        self.root, self.names, self.output_dir = root, names, root

    def status(self):
        return {n: "done" if (self.root / n / "result.json").exists() else "pending" for n in self.names}

    def run_dir(self, name):
        return self.root / name


def _run(root, name, start, end):
    d = root / name
    d.mkdir(parents=True)
    for file, t in (("run.json", start), ("result.json", end)):
        (d / file).write_text("{}")
        os.utime(d / file, (t, t))


def test_sweep_timing_times_each_run_once_and_counts_overlaps_once(tmp_path):
    root = tmp_path / "main"
    _run(root, "a", 1000.0, 1100.0)
    _run(root, "b", 1050.0, 1200.0)   # overlaps a: busy time is the union, 200 s
    (root / "c").mkdir(parents=True)  # not finished
    times = pages.sweep_timing({"main": _FakeSweep(root, ["a", "b", "c"])}, tmp_path)
    assert {k: v["seconds"] for k, v in times["runs"].items()} == {"main/a": 100.0, "main/b": 150.0}
    assert times["busy_seconds"] == 200.0
    os.utime(root / "a" / "result.json", (5000.0, 5000.0))  # a copy's file times: not read again
    again = pages.sweep_timing({"main": _FakeSweep(root, ["a", "b", "c"])}, tmp_path, started=1500.0)
    assert again["runs"]["main/a"]["seconds"] == 100.0 and again["invocations"] == [1500.0]
    _run(root, "c2", 1400.0, 1700.0)  # began before this invocation started: resumed, timed from it
    third = pages.sweep_timing({"main": _FakeSweep(root, ["a", "b", "c2"])}, tmp_path)
    assert third["runs"]["main/c2"] == {"start": 1500.0, "seconds": 200.0, "resumed": True, "shared": False}
    assert json.loads((tmp_path / "timing.json").read_text()) == third
    _run(root, "d", 1800.0, 1900.0)  # started from another run's shared prefix (the sweep logged it)
    (root / "shared" / "adopted").mkdir(parents=True)
    (root / "shared" / "adopted" / "d.json").write_text("{}")
    fourth = pages.sweep_timing({"main": _FakeSweep(root, ["a", "b", "c2", "d"])}, tmp_path)
    assert fourth["runs"]["main/d"]["shared"] is True and fourth["runs"]["main/b"].get("shared") is False
