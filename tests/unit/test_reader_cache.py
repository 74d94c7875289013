"""Reader library: decode-once cache, prefetch, zero-copy batches, threads, service options.

Run: python3 -m pytest tests/unit/test_reader_cache.py -q
"""

from __future__ import annotations

import threading
import time

import numcodecs
import numpy as np
import pytest
from numcodecs.abc import Codec

from services.reader.cache import BlockCache
from services.reader.reader import ReaderConfig, ReplayReader
from services.reader.synth import Key, synthetic_frames, write_buffer

H, W = 16, 20
FRAME = H * W * 3  # bytes of one (H, W, 3) uint8 frame
LENGTHS = [20, 12]


def make_reader(**kw) -> ReplayReader:
    opts = {"max_chunk_bytes": 6 * FRAME, "cache_bytes": 64 * FRAME, "threads": 2, **kw}
    return ReplayReader(ReaderConfig(**opts))


@pytest.fixture
def path(tmp_path) -> str:
    return write_buffer(tmp_path / "b.zarr", LENGTHS, {"img": Key((H, W, 3), chunks=(2, H, W, 3))})


def test_consecutive_requests_decode_each_block_once(path):
    r = make_reader(prefetch=False)
    try:
        frames = [r.frames(path, 0, "img", i, i + 1).frames for i in range(20)]
        assert np.array_equal(np.concatenate(frames), synthetic_frames(np.arange(20), (H, W, 3)))
        s = r.stats()
        # blocks hold 3 chunks (6 frames, max_chunk_bytes): frames 0..19 touch 4 blocks
        assert s["decoded"] == 4 and s["misses"] == 4 and s["hits"] == 16
    finally:
        r.close()


def test_batches_stop_at_block_ends_and_are_views(path):
    r = make_reader(prefetch=False)
    try:
        batches = list(r.iter_frames(path, 1, "img"))  # episode 1 = global frames 20..31
        assert [(b.start, b.stop, b.next) for b in batches] == [
            (0, 4, 4), (4, 10, 10), (10, 12, None)
        ]  # fmt: skip
        assert all(b.batch == 6 and b.episode_length == 12 for b in batches)
        again = r.frames(path, 1, "img", 4, 10).frames
        assert np.shares_memory(again, batches[1].frames)  # zero-copy views of the block
        assert not again.flags.writeable  # callers cannot corrupt the cache
        strided = r.frames(path, 1, "img", 0, None, 5).frames  # copies across blocks
        assert np.array_equal(strided, synthetic_frames(np.arange(20, 32, 5), (H, W, 3)))
    finally:
        r.close()


def test_sequential_read_prefetches_the_next_block(path):
    r = make_reader(prefetch=True)
    try:
        b = r.frames(path, 0, "img", 0)
        assert b.next == 6
        deadline = time.monotonic() + 5
        while r.cache.stats()["decoded"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.cache.contains((r.open(path)["dataset"], "data/img", 6, 1))
        r.frames(path, 0, "img", 6)
        s = r.stats()  # block 1 was prefetched (a hit now), block 2 is being prefetched
        assert s["hits"] == 1 and s["misses"] == 3
    finally:
        r.close()
    r = make_reader(prefetch=False)
    try:
        r.frames(path, 0, "img", 0)
        time.sleep(0.05)
        assert r.stats()["decoded"] == 1
    finally:
        r.close()


class SlowCodec(Codec):
    """A real numcodecs codec that sleeps while decoding (as a heavy image codec would)."""

    codec_id = "test_reader_slow"
    threads: set[str] = set()

    def encode(self, buf):
        return bytes(np.ascontiguousarray(buf).data)

    def decode(self, buf, out=None):
        SlowCodec.threads.add(threading.current_thread().name)
        time.sleep(0.05)  # releases the GIL like imagecodecs / Blosc do
        return numcodecs.compat.ndarray_copy(buf, out) if out is not None else bytes(buf)


def test_chunks_of_a_block_decode_in_parallel_threads(tmp_path):
    numcodecs.register_codec(SlowCodec)
    keys = {"img": Key((H, W, 3), chunks=(1, H, W, 3), compressor=SlowCodec())}
    path = write_buffer(tmp_path / "slow.zarr", [8], keys)
    r = make_reader(max_chunk_bytes=8 * FRAME, threads=4, prefetch=False)
    try:
        SlowCodec.threads.clear()
        t0 = time.perf_counter()
        b = r.frames(path, 0, "img")
        elapsed = time.perf_counter() - t0
        assert np.array_equal(b.frames, synthetic_frames(np.arange(8), (H, W, 3)))
        assert len(SlowCodec.threads) >= 2 and all(
            n.startswith("decode") for n in SlowCodec.threads
        )
        assert elapsed < 8 * 0.05  # 8 chunks x 50 ms, overlapped
    finally:
        r.close()


def test_cache_is_bounded_and_evicts_least_recently_used():
    cache = BlockCache(capacity_bytes=250, threads=1)
    try:
        for k in range(5):
            cache.get(k, lambda: (np.zeros(100, np.uint8), [lambda: None])).result()
        time.sleep(0.01)
        s = cache.stats()
        assert s["cache_bytes"] <= 250 and s["cache_blocks"] == 2
        assert cache.contains(4) and cache.contains(3) and not cache.contains(0)
    finally:
        cache.close()


def test_failed_block_is_not_cached():
    cache = BlockCache(capacity_bytes=1 << 20, threads=1)
    try:

        def boom():
            raise ValueError("bad chunk")

        fut = cache.get("k", lambda: (np.zeros(4), [boom]))
        with pytest.raises(ValueError, match="bad chunk"):
            fut.result()
        time.sleep(0.01)
        assert not cache.contains("k")
    finally:
        cache.close()


def test_concurrent_readers_get_the_same_bytes(path):
    r = make_reader()
    expected = synthetic_frames(np.arange(32), (H, W, 3))
    errors = []

    def work(ep: int) -> None:
        try:
            for _ in range(5):
                got = np.concatenate([b.frames for b in r.iter_frames(path, ep, "img")])
                start = 0 if ep == 0 else 20
                assert np.array_equal(got, expected[start : start + len(got)])
        except Exception as e:  # collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    r.close()
    assert not errors


def test_close_dataset_drops_its_blocks(path):
    r = make_reader(prefetch=False)
    try:
        r.frames(path, 0, "img")
        assert r.stats()["cache_blocks"] == 1
        assert r.close_dataset(path) is True
        assert r.stats()["cache_blocks"] == 0 and r.stats()["datasets"] == []
        assert r.close_dataset(path) is False
        assert r.frames(path, 0, "img").frames.shape == (6, H, W, 3)  # reopens on use
    finally:
        r.close()


def test_reopen_sees_appended_episodes_and_drops_stale_blocks(path):
    import zarr

    r = make_reader(prefetch=False)
    try:
        assert r.open(path)["n_episodes"] == 2
        r.frames(path, 1, "img")
        root = zarr.open_group(path, mode="r+")  # append an episode as ReplayBuffer.add_episode
        img = root["data/img"]
        img.resize((40, H, W, 3))
        img[32:40] = np.full((8, H, W, 3), 7, np.uint8)
        root["meta/episode_ends"].resize((3,))
        root["meta/episode_ends"][2] = 40
        assert r.frames(path, 1, "img").episode_length == 12  # still the opened view
        info = r.open(path)
        assert info["n_episodes"] == 3 and info["episode_ends"].tolist() == [20, 32, 40]
        assert r.stats()["cache_blocks"] == 0
        assert (r.frames(path, 2, "img").frames == 7).all()
        assert r.open(path)["n_episodes"] == 3 and r.stats()["cache_blocks"] == 1  # unchanged
    finally:
        r.close()


def test_build_service_rejects_unknown_options_and_backends():
    from services.reader.service import build_service

    with pytest.raises(
        ValueError,
        match=r"reader options.chunk: unknown field; valid fields are \[.*max_chunk_bytes",
    ):
        build_service("zarr", {"chunk": 1})
    with pytest.raises(ValueError, match="backend 'hdf5': unknown"):
        build_service("hdf5", {})
    svc = build_service("zarr", {"threads": 1, "workers": 3})
    assert svc.workers == 3 and set(svc.ops) == {"open", "frames", "arrays", "close"}
    assert "imagecodecs_jpegxl" in svc.capabilities["codecs"]
