from __future__ import annotations

import errno
import io
import logging
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

import snugfit.data.cache
import snugfit.data.datasets
import snugfit.errors
from fixtures import colour_image, make_image_folder
from snugfit.data.augment import center_batch
from snugfit.data.cache import PixelCache, cache_dir, cache_size
from snugfit.data.decode import decode_train, decode_valid
from snugfit.data.loaders import ImageDataLoaders
from snugfit.errors import SnugfitError

FAST = {"num_workers": 0, "device": "cpu", "bs": 4, "size": 32}
ENTRY = 3 * 40 * 40 + 128  # a presize-40 training entry on disk


def _quiet() -> Console:
    return Console(file=io.StringIO())


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def _count_decodes(monkeypatch) -> list[str]:
    """Make the loader's decoders record each call (they still decode)."""
    calls: list[str] = []

    def train(path, presize):
        calls.append(str(path))
        return decode_train(path, presize)

    def valid(path, size, crop_pct=0.875):
        calls.append(str(path))
        return decode_valid(path, size, crop_pct)

    # Patched in snugfit.data.datasets, where ImageDataset looks them up (it imports them
    # from snugfit.data.decode).
    monkeypatch.setattr(snugfit.data.datasets, "decode_train", train)
    monkeypatch.setattr(snugfit.data.datasets, "decode_valid", valid)
    return calls


def _entries(root: Path) -> list[Path]:
    return sorted(root.glob("??/*.npy"))


# -- what the cache returns --------------------------------------------------------


def test_cached_pixels_equal_a_fresh_decode(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=_quiet())
    plain = ImageDataLoaders.from_folder(image_folder, **FAST, cache=False)
    for _ in range(2):  # epoch 1 fills the cache, epoch 2 reads only from it
        assert _same(_batches(dls.train), _batches(plain.train))  # augmented, same seed
        assert _same(_batches(dls.valid), _batches(plain.valid))
    cache = dls.cache
    for p, _ in dls.train_items:
        got = cache.get(cache.key_for(p, ("train", 40)), (3, 40, 40))
        assert torch.equal(torch.from_numpy(np.array(got)), decode_train(p, 40))
    for p, _ in dls.valid_items:
        got = cache.get(cache.key_for(p, ("valid", 32, 0.875)))
        assert torch.equal(torch.from_numpy(np.array(got)), decode_valid(p, 32, 0.875))
    assert len(_entries(cache.root)) == 24  # 16 train + 8 valid, each with its own params
    assert dls.cache_stats() == {"hits": 24, "misses": 24}  # all missing, then all there


def test_second_run_reads_pixels_without_decoding(image_folder, monkeypatch):
    # The first run decodes in worker processes, which write the entries.
    first = ImageDataLoaders.from_folder(image_folder, **{**FAST, "num_workers": 2})
    first.console = _quiet()
    train, valid = _batches(first.train), _batches(first.valid)
    first.close()
    calls = _count_decodes(monkeypatch)
    second = ImageDataLoaders.from_folder(image_folder, **FAST)
    assert _same(_batches(second.train), train) and _same(_batches(second.valid), valid)
    assert calls == []
    assert second.cache_stats() == {"hits": 24, "misses": 0}


def test_changed_image_is_decoded_again(image_folder, monkeypatch):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=_quiet())
    before = torch.cat([x for x, _ in dls.valid])
    path = dls.valid_items[0][0]
    colour_image(1, np.random.default_rng(7), (50, 40)).save(path)  # another colour, size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = _count_decodes(monkeypatch)
    after = torch.cat([x for x, _ in dls.valid])
    assert calls == [str(path)]  # only the changed file
    expected = center_batch(decode_valid(path, 32)[None], 32, dls.mean, dls.std)
    assert torch.equal(after[:1], expected) and not torch.equal(after[:1], before[:1])
    assert torch.equal(after[1:], before[1:])


def test_corrupt_entries_are_misses_and_rewritten(image_folder, monkeypatch):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=_quiet())
    first = _batches(dls.valid)
    cache = dls.cache
    a, b = (cache.path_for(cache.key_for(p, ("valid", 32, 0.875))) for p, _ in dls.valid_items[:2])
    a.write_bytes(a.read_bytes()[:1000])  # short: a crash mid-write in an old version
    b.write_bytes(b"\x93NUMPY garbage")
    calls = _count_decodes(monkeypatch)
    assert _same(_batches(dls.valid), first)
    assert sorted(calls) == sorted(str(p) for p, _ in dls.valid_items[:2])
    calls.clear()
    assert _same(_batches(dls.valid), first) and calls == []  # rewritten whole
    assert a.stat().st_size == b.stat().st_size == 3 * 32 * 32 + 128


def test_pixelcache_get_put_and_corruption(tmp_path):
    cache = PixelCache(tmp_path / "c", max_bytes=10**6)
    img = tmp_path / "x.jpg"
    colour_image(0, np.random.default_rng(0)).save(img)
    key = cache.key_for(img, ("train", 8))
    assert key != cache.key_for(img, ("train", 9)) and len(key) == 32
    assert cache.get(key) is None and not cache.touch(key)
    arr = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    assert cache.put(key, arr)
    assert cache.path_for(key) == tmp_path / "c" / key[:2] / f"{key}.npy"
    assert np.array_equal(cache.get(key), arr) and cache.touch(key)
    assert cache.get(key, (3, 9, 9)) is None  # another shape: a miss
    out = np.zeros_like(arr)
    assert cache.read_into(key, out) and np.array_equal(out, arr)
    cache.path_for(key).write_bytes(cache.path_for(key).read_bytes()[:150])
    assert cache.get(key) is None and not cache.read_into(key, out)
    assert cache.put(key, arr) and np.array_equal(cache.get(key), arr)
    assert cache.size_bytes() == arr.nbytes + 128
    assert list(cache.path_for(key).parent.iterdir()) == [cache.path_for(key)]  # no temp left
    cache.clear()
    assert cache.size_bytes() == 0 and cache.get(key) is None


# -- two processes sharing the cache --------------------------------------------------


def _writer(root: str, keys: list[str], stop, started) -> None:
    """Rewrite every key over and over, alternating two values per key."""
    cache = PixelCache(root, max_bytes=10**9)
    n = 0
    while not stop.is_set():
        for k, key in enumerate(keys):
            cache.put(key, np.full((3, 128, 128), _value(k, n % 2), dtype=np.uint8))
        started.set()
        n += 1


def _value(k: int, version: int) -> int:
    return 10 * k + 1 + version


def test_reader_sees_only_complete_entries_while_another_process_writes(tmp_path):
    keys = [f"{k:02x}" + "ab" * 15 for k in range(4)]
    ctx = mp.get_context("spawn")
    stop, started = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_writer, args=(str(tmp_path / "c"), keys, stop, started))
    proc.start()
    try:
        assert started.wait(60), "writer did not start"
        cache = PixelCache(tmp_path / "c", max_bytes=10**9)
        out = np.empty((3, 128, 128), dtype=np.uint8)
        seen: set[int] = set()
        reads = 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            for k, key in enumerate(keys):
                arr = cache.get(key)
                assert arr is not None and arr.shape == (3, 128, 128)  # never absent or short
                values = np.unique(arr)
                assert len(values) == 1 and int(values[0]) in (_value(k, 0), _value(k, 1))
                seen.add(int(values[0]))
                assert cache.read_into(key, out)
                assert len(np.unique(out)) == 1 and int(out[0, 0, 0]) in (
                    _value(k, 0),
                    _value(k, 1),
                )
                reads += 1
        assert reads > 100 and len(seen) == 8  # both versions of every key were read
    finally:
        stop.set()
        proc.join(10)
    assert proc.exitcode == 0
    assert not list((tmp_path / "c").glob("??/*.tmp"))


# -- the size bound ---------------------------------------------------------------


def _fill(cache: PixelCache, n: int) -> list[str]:
    keys = []
    for i in range(n):
        key = f"{i:032x}"
        assert cache.put(key, np.full((3, 40, 40), i, dtype=np.uint8))
        os.utime(cache.path_for(key), ns=(10**18 + i * 10**9,) * 2)  # entry i is i-th oldest
        keys.append(key)
    return keys


def test_trim_deletes_the_oldest_entries_down_to_the_bound(tmp_path):
    keys = _fill(PixelCache(tmp_path / "c", max_bytes=10**9), 5)
    small = PixelCache(tmp_path / "c", max_bytes=3 * ENTRY + 10)
    assert small.size_bytes() == 5 * ENTRY
    assert small.trim() == 2 * ENTRY
    assert small.size_bytes() == 3 * ENTRY
    assert [small.get(k) is not None for k in keys] == [False, False, True, True, True]


def test_writer_stops_at_the_bound_and_says_so_once(tmp_path, caplog):
    cache = PixelCache(tmp_path / "c", max_bytes=3 * ENTRY)
    arr = np.zeros((3, 40, 40), dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        stored = [cache.put(f"{i:032x}", arr) for i in range(6)]
    assert stored == [True, True, True, False, False, False]
    assert cache.size_bytes() == 3 * ENTRY
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "decoded every epoch" in full[0].getMessage()


def test_loader_with_a_small_cache_still_serves_every_image(image_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        dls = ImageDataLoaders.from_folder(
            image_folder, **FAST, cache_size=5 * ENTRY, console=_quiet()
        )
        for _ in range(2):
            assert sorted(int(v) for _, y in dls.train for v in y) == [0] * 8 + [1] * 8
    assert dls.cache.size_bytes() <= 5 * ENTRY
    assert len(_entries(dls.cache.root)) == 5
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "11 of 16 images are not cached" in full[0].getMessage()


def test_a_new_dataset_evicts_older_entries_not_its_own(tmp_path):
    old = make_image_folder(tmp_path / "old", n_train=4, n_valid=2)
    new = make_image_folder(tmp_path / "new", n_train=4, n_valid=2, seed=1)
    room = 10 * ENTRY  # the 8 train images of one dataset fit, not of both
    a = ImageDataLoaders.from_folder(old, **FAST, cache_size=room, console=_quiet())
    list(a.train)
    for f in _entries(a.cache.root):  # used yesterday
        os.utime(f, (time.time() - 86400,) * 2)
    b = ImageDataLoaders.from_folder(new, **FAST, cache_size=room, console=_quiet())
    list(b.train)
    assert b.cache.size_bytes() <= room
    assert all(b.cache.touch(b.train.dataset.cache_key(i)) for i in range(8))
    list(b.train)
    assert b.train.cache_hits == 8


# -- settings -------------------------------------------------------------------------


def test_cache_false_writes_nothing(image_folder):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST, cache=False)
    assert len(_batches(dls.train)) == 4 and len(_batches(dls.valid)) == 2
    assert dls.cache is None and not cache_dir().exists()


def test_default_root_size_and_env(image_folder, monkeypatch, tmp_path):
    assert cache_dir() == tmp_path / "cache"  # the autouse fixture's private folder
    dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=_quiet())
    assert dls.cache.root == cache_dir() / "images"
    assert dls.cache.max_bytes == 20 * 10**9
    list(dls.valid)
    assert len(_entries(cache_dir() / "images")) == 8
    monkeypatch.setenv("SNUGFIT_CACHE_SIZE", "512MiB")
    assert cache_size() == 512 * 2**20 and cache_size("2GB") == 2 * 10**9
    custom = ImageDataLoaders.from_folder(
        image_folder, **FAST, cache_root=tmp_path / "elsewhere", cache_size="1GB"
    )
    assert custom.cache.root == tmp_path / "elsewhere" and custom.cache.max_bytes == 10**9
    from snugfit.app import demo

    assert demo.cache_dir is cache_dir


@pytest.mark.parametrize("value", ["lots", -5, "1.5"])
def test_bad_cache_size_names_the_argument(image_folder, value):
    with pytest.raises(SnugfitError, match="cache_size"):
        ImageDataLoaders.from_folder(image_folder, **FAST, cache_size=value)


def test_bad_env_cache_size_names_the_variable(image_folder, monkeypatch):
    monkeypatch.setenv("SNUGFIT_CACHE_SIZE", "huge")
    with pytest.raises(SnugfitError, match="SNUGFIT_CACHE_SIZE"):
        ImageDataLoaders.from_folder(image_folder, **FAST)


def test_first_pass_prints_one_line_off_a_terminal(image_folder):
    out = io.StringIO()
    dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=Console(file=out))
    list(dls.train)
    list(dls.train)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cached 16 decoded images in ")
    assert lines[0].endswith("(0.1 MB)")


def test_one_batch_does_not_decode_the_whole_set(image_folder, monkeypatch):
    dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=_quiet())
    calls = _count_decodes(monkeypatch)
    dls.one_batch()
    assert len(calls) == 4  # one batch, not all 16 (and those 4 are now cached)
    assert len(_entries(dls.cache.root)) == 4


# -- a folder that cannot be written is not a full cache ---------------------------------

REASONS = {errno.EACCES: "permission denied", errno.EROFS: "read-only filesystem",
           errno.ENOSPC: "no space left on device"}  # fmt: skip


@pytest.mark.parametrize("fault", list(REASONS), ids=errno.errorcode.get)
def test_an_unwritable_cache_folder_says_why_once_and_images_are_decoded(
    image_folder, monkeypatch, caplog, fault
):
    def refuse(*args, **kwargs):
        raise OSError(fault, os.strerror(fault))

    monkeypatch.setattr(snugfit.errors.tempfile, "mkstemp", refuse)
    calls = _count_decodes(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=_quiet())
        for _ in range(2):
            assert sorted(int(v) for _, y in dls.train for v in y) == [0] * 8 + [1] * 8
    assert len(calls) == 32  # every image decoded in each epoch
    assert _entries(dls.cache.root) == []
    assert caplog.messages == [
        f"pixel cache {dls.cache.root}: cannot write there ({REASONS[fault]}): images are "
        "decoded every epoch instead; set $SNUGFIT_CACHE to another folder, or "
        "SNUGFIT_CACHE_SIZE=0 to turn the cache off"
    ]


def test_a_disk_that_fills_up_keeps_the_entries_written_and_says_so(
    image_folder, monkeypatch, caplog
):
    write_array, written = np.lib.format.write_array, []

    def fill_up(f, array, **kwargs):
        if len(written) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(array.shape)
        return write_array(f, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", fill_up)
    with caplog.at_level(logging.WARNING, logger="snugfit"):
        dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=_quiet())
        for _ in range(2):
            assert sorted(int(v) for _, y in dls.train for v in y) == [0] * 8 + [1] * 8
    assert len(_entries(dls.cache.root)) == 5  # those written stay (and are read)
    assert not list(dls.cache.root.glob("??/*.tmp"))  # the failed one's temporary is gone
    assert len(caplog.messages) == 1 and "no space left on device" in caplog.messages[0]
    assert "is full" not in caplog.messages[0]


@pytest.mark.parametrize("zero", ["0", "0GB", "0 MiB"])
def test_cache_size_zero_turns_the_cache_off(image_folder, monkeypatch, zero):
    assert cache_size(zero) == cache_size(0) == 0
    monkeypatch.setenv("SNUGFIT_CACHE_SIZE", zero)
    dls = ImageDataLoaders.from_folder(image_folder, **FAST, console=_quiet())
    assert dls.cache is None
    assert len(_batches(dls.train)) == 4 and len(_batches(dls.valid)) == 2
    assert not cache_dir().exists()
