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


def test_instance_lock_is_exclusive_and_freed_when_its_process_dies(tmp_path):
    import subprocess
    import sys

    from connectors.errors import SpoolLocked
    from connectors.spool import InstanceLock, peer_directories

    mine = InstanceLock(tmp_path / "c-1")
    mine.acquire()
    with pytest.raises(SpoolLocked):
        InstanceLock(tmp_path / "c-1").acquire()  # another open file: refused, even in-process
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from connectors.spool import InstanceLock;"
                               f"InstanceLock({str(tmp_path / 'c-2')!r}).acquire(); print('held', flush=True);"
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not InstanceLock(tmp_path / "c-2").try_acquire()
        holder.kill()  # SIGKILL: the kernel drops the flock
        holder.wait(10)
        peer = InstanceLock(tmp_path / "c-2")
        assert peer.try_acquire()
        peer.release()
    finally:
        holder.kill()
    assert [d.name for d in peer_directories(tmp_path, "c-1")] == ["c-2"]
    mine.release()
    assert InstanceLock(tmp_path / "c-1").try_acquire()
