"""Hostile outputs on a real folder: a 10,000-deep tree, an undeclared FIFO and a symlink to /etc/passwd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner.engine.execute import _chown_tree
from runner.errors import TrainingFailed
from runner.manifest import OutputSpec
from runner.outputs import MAX_DEPTH, collect_outputs
from runner.progress import RecordingProgress


def make_deep(root: Path, depth: int) -> None:
    """root/d/d/…/d, `depth` folders, made through descriptors (the path outgrows PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def remove_deep(root: Path) -> None:
    """Take root/d/d/… apart from the top, so pytest's own (recursive) clean-up never sees it."""
    top = root / "d"
    while top.is_dir():
        lifted = root / "lifted"
        if (top / "d").is_dir():
            os.rename(top / "d", lifted)
        os.rmdir(top)
        if lifted.is_dir():
            os.rename(lifted, top)


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "outputs"
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(b"weights")
    return folder


def test_a_10000_deep_folder_is_one_clear_error(outputs: Path):
    make_deep(outputs, 10_000)
    try:
        _chown_tree(outputs, os.getuid(), os.getgid())  # no RecursionError
        with pytest.raises(TrainingFailed, match=f"nested more than {MAX_DEPTH} folders deep"):
            collect_outputs((OutputSpec("model.bin"),), outputs, RecordingProgress())
        with pytest.raises(TrainingFailed, match="nested more than"):  # declared, the same
            collect_outputs((OutputSpec("d"),), outputs, RecordingProgress())
    finally:
        remove_deep(outputs)


def test_a_tree_within_the_limit_is_collected(outputs: Path):
    make_deep(outputs, MAX_DEPTH)
    deepest = outputs / "/".join(["d"] * MAX_DEPTH)
    (deepest / "leaf.txt").write_text("x")
    found = collect_outputs((OutputSpec("model.bin"), OutputSpec("d")), outputs, RecordingProgress())
    assert len(found.files) == 2


def test_undeclared_fifo_and_link_out_are_removed_not_set_aside(outputs: Path):
    os.mkfifo(outputs / "pipe")
    os.symlink("/etc/passwd", outputs / "passwd")
    (outputs / "scratch").mkdir()
    os.mkfifo(outputs / "scratch" / "pipe")
    os.symlink("/etc/passwd", outputs / "scratch" / "passwd")
    (outputs / "scratch" / "notes.txt").write_text("kept aside")
    progress = RecordingProgress()
    found = collect_outputs((OutputSpec("model.bin"),), outputs, progress)
    assert [f.path for f in found.files] == ["model.bin"]
    undeclared = outputs.parent / "undeclared"
    left = sorted(p.relative_to(outputs.parent).as_posix() for p in outputs.parent.rglob("*"))
    assert left == ["outputs", "outputs/model.bin", "undeclared", "undeclared/scratch", "undeclared/scratch/notes.txt"]
    assert (undeclared / "scratch" / "notes.txt").read_text() == "kept aside"
    warnings = " ".join(m for kind, m in progress.messages if kind == "warn")
    for name in ("pipe is a FIFO", "passwd is a symlink pointing outside", "scratch/pipe is a FIFO",
                 "scratch/passwd is a symlink"):
        assert name in warnings, warnings
