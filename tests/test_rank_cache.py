"""Token ranks are decoded once per machine: later processes read the cache file, which a
damaged or stale copy, concurrent writers or an unwritable cache cannot break."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from batchpilot import rank_cache, tokens

SOURCE = "ab" * 32
RANKS = {bytes([i % 256, i // 256]) * (1 + i % 3): i for i in range(3000)}


def decoder(calls: list[int]) -> Callable[[], dict[bytes, int]]:
    def decode() -> dict[bytes, int]:
        calls.append(1)
        return dict(RANKS)

    return decode


def test_ranks_are_decoded_once_and_read_back_the_same(tmp_path: Path) -> None:
    calls: list[int] = []
    assert rank_cache.cached_ranks("enc", SOURCE, decoder(calls)) == RANKS
    assert rank_cache.cached_ranks("enc", SOURCE, decoder(calls)) == RANKS
    assert len(calls) == 1
    assert [p.name for p in rank_cache.cache_dir().iterdir()] == ["enc-abababababababab.ranks"]


def test_a_damaged_or_stale_cache_file_is_decoded_again_and_replaced() -> None:
    calls: list[int] = []
    rank_cache.cached_ranks("enc", SOURCE, decoder(calls))
    path = rank_cache.cache_dir() / "enc-abababababababab.ranks"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert rank_cache.cached_ranks("enc", SOURCE, decoder(calls)) == RANKS
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    assert rank_cache.cached_ranks("enc", SOURCE, decoder(calls)) == RANKS
    assert len(calls) == 3
    assert rank_cache.cached_ranks("enc", SOURCE, decoder(calls)) == RANKS
    assert len(calls) == 3, "the file written again is read"
    # The same name from other rank files (another sha256 sharing its first 16 digits).
    assert rank_cache._read(path, bytes.fromhex("ab" * 31 + "cd")) is None


def test_concurrent_writers_leave_one_whole_file() -> None:
    calls: list[int] = []
    results: list[dict[bytes, int]] = []
    start = threading.Barrier(8)

    def load() -> None:
        start.wait()
        results.append(rank_cache.cached_ranks("enc", SOURCE, decoder(calls)))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [RANKS] * 8
    assert [p.name for p in rank_cache.cache_dir().iterdir()] == ["enc-abababababababab.ranks"]
    assert rank_cache._read(rank_cache.cache_dir() / "enc-abababababababab.ranks", b"\xab" * 32)


def test_an_unwritable_cache_only_costs_the_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv(rank_cache.CACHE_DIR_ENV, str(blocker))
    calls: list[int] = []
    assert rank_cache.cached_ranks("enc", SOURCE, decoder(calls)) == RANKS
    assert rank_cache.cached_ranks("enc", SOURCE, decoder(calls)) == RANKS
    assert len(calls) == 2


def test_a_second_process_builds_the_encoding_from_the_cache() -> None:
    script = (
        "from batchpilot import tokens\n"
        "calls = []\n"
        "load = tokens._load_ranks\n"
        "tokens._load_ranks = lambda *a: calls.append(1) or load(*a)\n"
        "print(tokens.get_encoding('cl100k_base').encode_ordinary('hello world'))\n"
        "print(len(calls))\n"
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout.split("\n")
        for _ in range(2)
    ]
    assert runs[0][:2] == ["[15339, 1917]", "1"]
    assert runs[1][:2] == ["[15339, 1917]", "0"], "the second process decodes nothing"
    name = f"cl100k_base-{tokens._SPECS['cl100k_base'].sha256[:16]}.ranks"
    assert (rank_cache.cache_dir() / name).is_file()
