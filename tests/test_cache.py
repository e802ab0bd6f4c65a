"""The two-level embedding cache: counts, bounds, corruption, unwritable disks, several
processes, float16 storage."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_edgesam.engine import cache as cache_mod
from napari_edgesam.engine import paths
from napari_edgesam.engine.cache import SUFFIX, CacheWarning, EmbeddingCache, default_cache

EMB_SHAPE = (1, 256, 64, 64)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    user = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("NAPARI_EDGESAM_CACHE_DIR", str(user / "cache"))
    monkeypatch.setenv("NAPARI_EDGESAM_CONFIG_DIR", str(user / "config"))
    cache_mod.set_default_cache(None)
    yield
    cache_mod.set_default_cache(None)


def emb(seed: int, shape=EMB_SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*" + SUFFIX)) if folder.exists() else []


def small(seed: int) -> np.ndarray:
    return emb(seed, (16, 16))  # 1 KiB


# -- memory level ------------------------------------------------------------------------


def test_memory_hits_and_misses():
    c = EmbeddingCache(disk_dir=False)
    assert c.get("a") is None
    a = emb(0)
    c.put("a", a)
    got = c.get("a")
    np.testing.assert_array_equal(got, a)
    assert got.dtype == np.float32 and not got.flags.writeable
    a[...] = 0  # the cache holds its own copy
    assert c.get("a")[0, 0, 0, 0] != 0
    s = c.stats
    assert (s["memory_hits"], s["disk_hits"], s["misses"], s["puts"]) == (2, 0, 1, 1)
    assert s["memory_entries"] == 1 and s["memory_bytes"] == a.nbytes
    assert "a" in c and "b" not in c


def test_memory_lru_eviction_at_bound():
    one = small(0).nbytes
    c = EmbeddingCache(memory_bytes=3 * one, disk_dir=False)
    for k in "abc":
        c.put(k, small(ord(k)))
    assert c.get("a") is not None  # a is now the most recently used
    c.put("d", small(4))
    assert c.get("b") is None  # the least recently used went
    assert all(c.get(k) is not None for k in "acd")
    s = c.stats
    assert s["memory_evictions"] == 1 and s["memory_bytes"] == 3 * one
    c.put("huge", emb(1, (64, 64)))  # larger than the bound: not kept
    assert c.get("huge") is None and c.stats["memory_entries"] == 3


def test_memory_disabled_and_replace():
    c = EmbeddingCache(memory_bytes=0, disk_dir=False)
    c.put("a", small(0))
    assert c.get("a") is None
    c = EmbeddingCache(disk_dir=False)
    c.put("a", small(0))
    c.put("a", small(1))
    np.testing.assert_array_equal(c.get("a"), small(1))
    assert c.stats["memory_bytes"] == small(0).nbytes


def test_thread_safety():
    c = EmbeddingCache(memory_bytes=20 * small(0).nbytes, disk_dir=False)
    errors = []

    def work(t):
        try:
            for i in range(300):
                k = f"k{(i * 7 + t) % 40}"
                c.put(k, small((i * 7 + t) % 40))
                got = c.get(k)
                if got is not None:
                    np.testing.assert_array_equal(got, small(int(k[1:])))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = c.stats
    assert s["memory_bytes"] == s["memory_entries"] * small(0).nbytes <= 20 * small(0).nbytes


# -- disk level --------------------------------------------------------------------------


def test_disk_survives_restart_exactly(tmp_path):
    """Embeddings are stored as the encoder made them (float32): a result never depends
    on whether its embedding came from the encoder, memory or the disk."""
    a = emb(0)
    c = EmbeddingCache(disk_dir=tmp_path)
    c.put("key", a)
    files = entries(tmp_path)
    assert len(files) == 1
    assert a.nbytes < files[0].stat().st_size < a.nbytes + 1024  # float32 on disk: 4 MiB
    c2 = EmbeddingCache(disk_dir=tmp_path)  # a new process / a restart
    got = c2.get("key")
    assert got.dtype == np.float32 and got.shape == EMB_SHAPE
    np.testing.assert_array_equal(got, a)
    assert got is c2.get("key")  # promoted to memory
    s = c2.stats
    assert (s["disk_hits"], s["memory_hits"], s["misses"]) == (1, 1, 0)


def test_entries_of_the_first_format_are_dropped(tmp_path):
    """NESCACHE1 entries (float16) would make cached results differ from fresh ones: they
    are a miss and are removed."""
    import hashlib as _h
    import json as _j
    import struct as _s

    c = EmbeddingCache(disk_dir=tmp_path)
    c.put("key", emb(0))
    path = entries(tmp_path)[0]
    header = _j.dumps({"key": "key", "dtype": "<f2", "orig_dtype": "<f4",
                       "shape": list(EMB_SHAPE), "nbytes": int(np.prod(EMB_SHAPE)) * 2})
    body = (b"NESCACHE1\n" + _s.pack("<I", len(header)) + header.encode()
            + emb(0).astype(np.float16).tobytes())
    path.write_bytes(body + _h.blake2b(body, digest_size=32).digest())
    fresh = EmbeddingCache(disk_dir=tmp_path)
    assert fresh.get("key") is None
    assert not path.exists() and fresh.stats["corrupt"] == 0


def test_an_entry_holds_several_named_arrays(tmp_path):
    """Room for more than the embedding (e.g. a decoder's prompt-independent part)."""
    c = EmbeddingCache(disk_dir=tmp_path)
    arrays = {"array": emb(0), "extra": np.arange(12, dtype=np.float32).reshape(3, 4)}
    data = c.encode_entry("k", arrays)
    back = EmbeddingCache.decode_entry("k", data)
    assert set(back) == {"array", "extra"}
    for name, arr in arrays.items():
        np.testing.assert_array_equal(back[name], arr)
    assert EmbeddingCache.decode_entry("other key", data) is None
    assert EmbeddingCache.decode_entry("k", data[:-40] + data[-32:]) is None


def test_disk_float32_exact(tmp_path):
    a = emb(1)
    EmbeddingCache(disk_dir=tmp_path, disk_dtype="float32").put("k", a)
    got = EmbeddingCache(disk_dir=tmp_path, disk_dtype="float32").get("k")
    np.testing.assert_array_equal(got, a)
    assert entries(tmp_path)[0].stat().st_size > a.nbytes
    ints = np.arange(10, dtype=np.int64)  # non-float arrays are stored as they are
    EmbeddingCache(disk_dir=tmp_path).put("ints", ints)
    np.testing.assert_array_equal(EmbeddingCache(disk_dir=tmp_path).get("ints"), ints)
    with pytest.raises(ValueError):
        EmbeddingCache(disk_dir=tmp_path, disk_dtype="int8")


def test_float16_overflow_is_stored_exactly(tmp_path):
    a = small(0) * 1e6  # beyond float16's range: would become inf
    EmbeddingCache(disk_dir=tmp_path).put("big", a)
    np.testing.assert_array_equal(EmbeddingCache(disk_dir=tmp_path).get("big"), a)
    b = small(1)
    b[0, 0], b[0, 1] = np.nan, np.inf  # non-finite values do not force float32
    EmbeddingCache(disk_dir=tmp_path).put("nan", b)
    got = EmbeddingCache(disk_dir=tmp_path).get("nan")
    assert np.isnan(got[0, 0]) and np.isinf(got[0, 1]) and got.dtype == np.float32


def test_keys_are_arbitrary_strings(tmp_path):
    c = EmbeddingCache(disk_dir=tmp_path)
    keys = ["model=ab/cd|px=..\\x", "é 中文 \n", "", "a" * 5000]
    for i, k in enumerate(keys):
        c.put(k, small(i))
    c2 = EmbeddingCache(disk_dir=tmp_path)
    for i, k in enumerate(keys):
        np.testing.assert_allclose(c2.get(k), small(i), rtol=1e-3, atol=1e-3)
    assert all(p.parent == tmp_path for p in entries(tmp_path))


def test_put_levels(tmp_path):
    c = EmbeddingCache(disk_dir=tmp_path)
    c.put("disk-only", small(0), memory=False)
    c.put("memory-only", small(1), disk=False)
    assert c.stats["memory_entries"] == 1 and len(entries(tmp_path)) == 1
    c2 = EmbeddingCache(disk_dir=tmp_path)
    assert c2.get("disk-only") is not None and c2.get("memory-only") is None


def test_disk_lru_eviction_at_bound(tmp_path):
    c = EmbeddingCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=10**9)
    for i, k in enumerate("abcd"):
        c.put(k, emb(i))
    size = entries(tmp_path)[0].stat().st_size
    # age the entries a (oldest) .. d so the order does not depend on clock resolution
    now = time.time()
    for i, k in enumerate("abcd"):
        p = c._path(k)
        os.utime(p, (now - 100 + i, now - 100 + i))
    c2 = EmbeddingCache(memory_bytes=0, disk_dir=tmp_path, disk_bytes=int(3.5 * size))
    assert c2.get("a") is not None  # a read makes "a" the most recently used
    c2.put("e", emb(5))  # 5 entries > 3.5: evict the oldest down to 90% of the bound
    left = {k for k in "abcde" if c2._path(k).exists()}
    assert left == {"a", "d", "e"}
    assert sum(p.stat().st_size for p in entries(tmp_path)) <= 3.5 * size
    assert c2.stats["disk_evictions"] == 2
    assert c2.get("b") is None and c2.get("a") is not None


def test_entry_larger_than_disk_bound_is_not_written(tmp_path):
    c = EmbeddingCache(disk_dir=tmp_path, disk_bytes=1000)
    c.put("big", emb(0))
    assert entries(tmp_path) == [] and c.get("big") is not None


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "truncate", "empty",
                                    "garbage"])
def test_corrupt_entry_is_dropped_and_recomputed(tmp_path, damage, caplog):
    a = emb(3)
    EmbeddingCache(disk_dir=tmp_path).put("k", a)
    (path,) = entries(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip_payload":
        data[len(data) // 2] ^= 0x01
    elif damage == "flip_header":
        data[20] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 1000]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a cache entry" * 10)
    path.write_bytes(bytes(data))
    c = EmbeddingCache(disk_dir=tmp_path)
    with caplog.at_level("WARNING"):
        assert c.get("k") is None
    assert c.stats["corrupt"] == 1 and c.stats["misses"] == 1
    assert not path.exists()  # dropped
    c.put("k", a)  # recomputed by the caller
    got = EmbeddingCache(disk_dir=tmp_path).get("k")
    np.testing.assert_allclose(got, a, rtol=1e-3, atol=1e-3)


def test_entry_of_another_key_is_not_returned(tmp_path):
    c = EmbeddingCache(disk_dir=tmp_path)
    c.put("one", small(1))
    (src,) = entries(tmp_path)
    os.replace(src, c._path("two"))  # a file under the wrong name
    assert EmbeddingCache(disk_dir=tmp_path).get("two") is None


def test_disk_dir_is_a_file_degrades_to_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    c = EmbeddingCache(disk_dir=blocker)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for i in range(5):
            c.put(f"k{i}", small(i))
    assert [w.category for w in rec] == [CacheWarning]
    assert "memory only" in str(rec[0].message)
    assert all(c.get(f"k{i}") is not None for i in range(5))
    assert c.stats["disk_writable"] is False and c.stats["misses"] == 0
    assert c.get("other") is None


def test_full_disk_degrades_to_memory(tmp_path, monkeypatch):
    c = EmbeddingCache(disk_dir=tmp_path)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.warns(CacheWarning, match="No space left"):
        c.put("a", emb(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        c.put("b", emb(1))
    assert list(tmp_path.iterdir()) == []  # no partial file left
    assert c.get("a") is not None and c.get("b") is not None
    monkeypatch.undo()
    assert EmbeddingCache(disk_dir=tmp_path).get("a") is None


def test_read_only_replace_degrades(tmp_path, monkeypatch):
    c = EmbeddingCache(disk_dir=tmp_path)

    def deny(*a):
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_mod.os, "replace", deny)
    with pytest.warns(CacheWarning):
        c.put("a", small(0))
    assert list(tmp_path.iterdir()) == []
    assert c.get("a") is not None


def part(seed: int, nbytes: int = 4096) -> dict:
    """A decoder image part: two named float32 tensors of ``nbytes`` in all."""
    rng = np.random.default_rng(seed)
    n = nbytes // 8
    return {"k": rng.standard_normal(n, dtype=np.float32),
            "v": rng.standard_normal(n, dtype=np.float32)}


def test_decoder_parts_are_kept_in_memory_only_under_their_own_bound(tmp_path):
    one = sum(a.nbytes for a in part(0).values())
    c = EmbeddingCache(memory_bytes=2 * small(0).nbytes, disk_dir=tmp_path,
                       part_memory_bytes=3 * one)
    c.put("e", small(0))
    for k in "abc":
        c.put_part(f"e|dec={k}", part(ord(k)))
    got = c.get_part("e|dec=a")  # now the most recently used
    assert got is not None and set(got) == {"k", "v"}
    assert all(not a.flags.writeable for a in got.values())
    np.testing.assert_array_equal(got["k"], part(ord("a"))["k"])
    c.put_part("e|dec=d", part(4))
    assert c.get_part("e|dec=b") is None  # the least recently used went
    assert all(c.get_part(f"e|dec={k}") is not None for k in "acd")
    s = c.stats
    assert s["part_evictions"] == 1 and s["part_entries"] == 3 and s["part_bytes"] == 3 * one
    assert s["part_hits"] == 4 and s["part_misses"] == 1
    # parts never evict embeddings, and never reach the disk
    assert c.get("e") is not None and s["memory_entries"] == 1
    assert len(entries(tmp_path)) == 1 and len(list(tmp_path.iterdir())) == 1
    c.put_part("huge", part(5, 4 * one))  # larger than the bound: not kept
    assert c.get_part("huge") is None and c.stats["part_entries"] == 3
    # discarding an embedding drops its parts; clearing the memory drops them all
    c.put_part("f|dec=a", part(6))
    c.discard("e")
    assert [k for k in "acd" if c.get_part(f"e|dec={k}") is not None] == []
    assert c.get_part("f|dec=a") is not None
    c.clear_memory()
    assert c.get_part("f|dec=a") is None and c.stats["part_bytes"] == 0
    off = EmbeddingCache(disk_dir=False, part_memory_bytes=0)
    off.put_part("x", part(0))
    assert off.get_part("x") is None


def test_clear(tmp_path):
    c = EmbeddingCache(disk_dir=tmp_path)
    for i in range(3):
        c.put(f"k{i}", small(i))
    c.clear_memory()
    assert len(entries(tmp_path)) == 3 and c.stats["memory_entries"] == 0
    c.clear()
    assert entries(tmp_path) == [] and c.get("k0") is None
    c.put("x", small(0))
    c.discard("x")
    assert c.get("x") is None and entries(tmp_path) == []


def test_stale_temporary_files_are_removed(tmp_path):
    stale = tmp_path / ".tmp-dead.part"
    stale.write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = tmp_path / ".tmp-live.part"
    fresh.write_bytes(b"writing")
    c = EmbeddingCache(disk_dir=tmp_path)
    c.put("k", small(0))  # the first write scans the folder
    assert not stale.exists() and fresh.exists()


def test_default_cache(monkeypatch):
    paths.set_setting("cache_memory_bytes", 1234)
    c = default_cache()
    assert c is default_cache()
    assert c.disk_dir == paths.cache_dir() / "embeddings"
    assert c.memory_bytes == 1234 and c.disk_bytes == 2 * 2**30
    assert c.disk_dtype is None  # exact: float32 embeddings stay float32
    paths.set_setting("cache_disk_enabled", False)
    cache_mod.set_default_cache(None)
    assert default_cache().disk_dir is None


# -- several processes -------------------------------------------------------------------


def _writer(folder: str, value: float, n: int) -> None:
    c = EmbeddingCache(memory_bytes=0, disk_dir=folder, disk_dtype="float32")
    arr = np.full(EMB_SHAPE, value, dtype=np.float32)
    for _ in range(n):
        c.put("shared", arr)


def _reader(folder: str, done, q) -> None:
    """Read until the writers are done (then once more); count wrong or half entries."""
    c = EmbeddingCache(memory_bytes=0, disk_dir=folder, disk_dtype="float32")
    bad = seen = 0
    last = False
    while not last:
        last = done.is_set()
        got = c.get("shared")
        if got is None:
            continue
        seen += 1
        if got.shape != EMB_SHAPE or not (np.all(got == 1.0) or np.all(got == 2.0)):
            bad += 1
    q.put((seen, bad, c.stats["corrupt"]))


def test_two_processes_write_the_same_key(tmp_path):
    ctx = mp.get_context("spawn")
    q, done = ctx.Queue(), ctx.Event()
    writers = [
        ctx.Process(target=_writer, args=(str(tmp_path), 1.0, 40)),
        ctx.Process(target=_writer, args=(str(tmp_path), 2.0, 40)),
    ]
    reader = ctx.Process(target=_reader, args=(str(tmp_path), done, q))
    for p in [reader, *writers]:
        p.start()
    for p in writers:
        p.join(timeout=120)
        assert p.exitcode == 0
    done.set()
    seen, bad, corrupt = q.get(timeout=120)
    reader.join(timeout=120)
    assert reader.exitcode == 0
    assert seen >= 1 and bad == 0 and corrupt == 0
    got = EmbeddingCache(disk_dir=tmp_path).get("shared")
    assert np.all(got == 1.0) or np.all(got == 2.0)
    # one complete entry, no temporary files left behind
    assert [p.name for p in tmp_path.iterdir()] == [EmbeddingCache(disk_dir=tmp_path)
                                                     ._path("shared").name]
