"""One file index for the whole job: the split scan equals the single scan; the cache is input, checked."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from alexnet_mp.data import folder
from alexnet_mp.data.index import VERSION, PathTable, read_index, write_index

from data_fixtures import tiny_root  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from imagenet_standin import ROOT, make_standin  # noqa: E402


@pytest.fixture(scope="module")
def messy(tiny_root, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny dataset with two bad files (one of them in the middle of a class)."""
    root = tmp_path_factory.mktemp("messy") / "ds"
    shutil.copytree(tiny_root, root)
    first = sorted((root / "train").iterdir())[1]
    (first / "train_001_00004.jpg").write_bytes(b"")
    (first / "zz_truncated.jpg").write_bytes(next(first.iterdir()).read_bytes()[:3000])
    return root


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flat")
    make_standin(out, classes=4, train=16, val=9, pool=4, seed=1)
    return out


def _snapshot(split: folder.Split) -> tuple:
    return list(split.files), split.labels.tolist(), split.sizes.tolist(), split.bad


def _rank(rank: int, port: int, jobs: list, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop("LOCAL_RANK", None)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    checked = []
    real = folder.check_image
    folder.check_image = lambda p: checked.append(p) or real(p)
    try:
        results = [_snapshot(folder.scan_split(root, split, cache_dir=f"{out}/cache{rank}", group=dist.group.WORLD,
                                               **keys)) for root, split, keys in jobs]
        Path(f"{out}/rank{rank}.txt").write_text(repr((results, checked)))
    finally:
        dist.destroy_process_group()


@pytest.mark.multiprocess
def test_the_split_scan_equals_the_single_scan_entry_for_entry(messy, flat, tmp_path):
    jobs = [(str(messy), "train", {}), (str(messy), "val", {}),
            (str(flat / ROOT), "val", {"val_labels": str(flat / "LOC_val_solution.csv")})]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, jobs, str(tmp_path)), nprocs=2, start_method="spawn")
    single = [_snapshot(folder.scan_split(root, split, cache_dir=str(tmp_path / "single"), **keys))
              for root, split, keys in jobs]
    assert single[0][3] and len(single[0][3]) == 2  # the bad files are found and gathered
    ranks = [eval(Path(tmp_path / f"rank{r}.txt").read_text()) for r in range(2)]
    for results, _ in ranks:
        assert results == single
    files = [set(checked) for _, checked in ranks]
    assert not files[0] & files[1]  # each file decoded once in the job ...
    total = sum(len(folder.scan_split(r, s, cache_dir=str(tmp_path / "single"), **k).files) +
                len(folder.scan_split(r, s, cache_dir=str(tmp_path / "single"), **k).bad) for r, s, k in jobs)
    assert len(files[0]) + len(files[1]) == total and abs(len(files[0]) - len(files[1])) <= len(jobs)
    assert (tmp_path / "cache0").exists() and not (tmp_path / "cache1").exists()  # ... and written once
    cached = [_snapshot(folder.scan_split(root, split, cache_dir=str(tmp_path / "cache0"), **keys))
              for root, split, keys in jobs]
    assert cached == single


def _counting(monkeypatch) -> list:
    calls = []
    real = folder.check_image
    monkeypatch.setattr(folder, "check_image", lambda p: calls.append(p) or real(p))
    return calls


def _rewrite(cache: Path, **changes) -> None:
    header, arrays = read_index(cache)
    header.pop("arrays"), header.pop("version")
    names = changes.pop("names", None)
    if names is not None:
        table = PathTable.from_strings("", names)
        changes.update(path_buf=table.buf, path_offsets=table.offsets)
    write_index(cache, {**header, **changes.pop("header", {})}, {**arrays, **changes})


HOSTILE = {
    "a path outside the split": lambda names, labels: dict(names=["../../../etc/passwd"] + names[1:]),
    "an absolute path": lambda names, labels: dict(names=["/etc/passwd"] + names[1:]),
    "a path in another class's folder": lambda names, labels: dict(names=[names[-1]] + names[1:]),
    "a hidden file": lambda names, labels: dict(names=[names[0].split("/")[0] + "/.x.jpg"] + names[1:]),
    "a label out of range": lambda names, labels: dict(labels=np.where(np.arange(len(labels)) == 0, 99, labels)),
    "another split": lambda names, labels: dict(header={"split": "/elsewhere/val"}),
    "a short offsets array": lambda names, labels: dict(path_offsets=np.zeros(2, dtype=np.int64)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_cache_is_rescanned_never_followed(tiny_root, tmp_path, monkeypatch, case):  # noqa: F811
    cache_dir = tmp_path / "c"
    first = folder.scan_split(tiny_root, "val", cache_dir=str(cache_dir))
    (cache,) = cache_dir.iterdir()
    _, arrays = read_index(cache)
    names = [PathTable("", arrays["path_buf"], arrays["path_offsets"]).relative(i) for i in range(len(first))]
    _rewrite(cache, **HOSTILE[case](names, arrays["labels"]))
    calls = _counting(monkeypatch)
    again = folder.scan_split(tiny_root, "val", cache_dir=str(cache_dir))
    assert len(calls) == len(first) and _snapshot(again) == _snapshot(first)


def test_a_cache_of_another_version_or_truncated_is_rescanned(tiny_root, tmp_path, monkeypatch):  # noqa: F811
    cache_dir = tmp_path / "c"
    first = folder.scan_split(tiny_root, "val", cache_dir=str(cache_dir))
    (cache,) = cache_dir.iterdir()
    data = cache.read_bytes()
    calls = _counting(monkeypatch)
    assert _snapshot(folder.scan_split(tiny_root, "val", cache_dir=str(cache_dir))) == _snapshot(first)
    assert calls == []  # the good cache is used
    for bad in (data.replace(f'"version": {VERSION}'.encode(), f'"version": {VERSION + 1}'.encode()),
                data[:len(data) - 100], b"\x80\x04pickled" + data[9:]):
        cache.write_bytes(bad)
        n = len(calls)
        assert _snapshot(folder.scan_split(tiny_root, "val", cache_dir=str(cache_dir))) == _snapshot(first)
        assert len(calls) == n + len(first)


def test_path_table_takes_and_selects_like_a_list():
    names = ["a/1.jpg", "b/22.jpg", "c/ü.jpg", "d/4444.jpg"]
    t = PathTable.from_strings("/r", names)
    assert list(t) == [f"/r/{n}" for n in names] and t.take([3, 0]) == ["/r/d/4444.jpg", "/r/a/1.jpg"]
    keep = np.array([False, True, True, False])
    assert list(t.select(keep)) == ["/r/b/22.jpg", "/r/c/ü.jpg"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 16])
def test_the_class_prefix_check_in_chunks(chunk):
    names = [b"cat", b"dog", b"emu"]
    good = PathTable.from_strings("", ["cat/1.jpg", "dog/2.jpg", "emu/3.jpg", "dog/4.jpg", "cat/5.jpg"])
    labels = np.array([0, 1, 2, 1, 0])
    assert folder._prefixes_are_classes(good.buf, good.offsets[:-1], labels, names, chunk=chunk)
    for wrong in ([0, 1, 2, 1, 1], [0, 1, 2, 2, 0]):  # the last entry, then one in a later chunk
        assert not folder._prefixes_are_classes(good.buf, good.offsets[:-1], np.array(wrong), names, chunk=chunk)
