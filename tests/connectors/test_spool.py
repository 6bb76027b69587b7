"""The on-disk spool: ordered, crash-safe, capped."""

from __future__ import annotations

import pytest

from connectors.errors import SpoolFull
from connectors.spool import Spool


def test_batches_come_back_oldest_first_and_survive_a_reopen(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=10_000, fsync=True)
    for i in range(12):  # more than 9, so file names must sort numerically
        spool.put(f"m v={i} {i}".encode())
    assert len(spool) == 12
    (tmp_path / "s" / "00000000000000000099.tmp").write_bytes(b"half-written")  # a crash mid-put
    reopened = Spool(tmp_path / "s", max_bytes=10_000)
    assert not list((tmp_path / "s").glob("*.tmp"))
    assert reopened.bytes == spool.bytes
    seen = []
    while (item := reopened.oldest()) is not None:
        path, body = item
        seen.append(body)
        reopened.remove(path)
    assert seen == [f"m v={i} {i}".encode() for i in range(12)]
    assert reopened.bytes == 0 and len(reopened) == 0
    reopened.put(b"after")  # numbering continues after the drained files
    assert reopened.oldest()[1] == b"after"


def test_the_cap_refuses_a_batch_and_keeps_what_is_there(tmp_path):
    spool = Spool(tmp_path / "s", max_bytes=100, fsync=False)
    spool.put(b"x" * 60)
    assert spool.has_room(40) and not spool.has_room(41)
    with pytest.raises(SpoolFull):
        spool.put(b"y" * 41)
    assert len(spool) == 1 and spool.bytes == 60
