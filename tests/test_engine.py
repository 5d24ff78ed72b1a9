"""The ingest engine: records kept on disk, one drive loop with a bounded window, chunking that never
changes a byte, fingerprints that stream to the same value as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import fer2013_csv
from fer_data import catalog, shards
from fer_data.ingest import (IngestJob, InputKeys, LocalRunner, Processed, Settings, drive, ingest, local_runner,
                             process_chunk, start)
from fer_data.record_store import RecordStore, unpack
from fer_data.records import Record, Reject


def test_store_gives_records_back_exactly_in_sample_id_order(tmp_path: Path) -> None:
    pixels = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)
    items = [
        Record("d:b", "d", "train", "/x/b.jpg", aus={12: (True, 2.0), 4: (None, None)},
               landmarks=((1.5, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0), (9.0, 10.25)), face_box=(0.0, 1.0, 2.0, 3.0),
               extra={"fold": 2}),
        Reject("d", "/x/bad.jpg", "adapter", "unparsable_row", "line 3"),
        Record("d:a", "d", "train", "/x/a.csv#row=0", pixels=pixels, aligned=True, emotion=3, valence=np.float32(0.5)),
        Record("d:c", "d", "test", "/x/c.mp4", kind="clip", frame_range=(3, 9), age=31.5),
        Record("d:a", "d", "val", "/x/a2.jpg"),  # a repeated id: the first row wins
        Record("d:e", "d", "test", "/x/e.csv#row=4", pixels="0 1 2 255 ü"),  # pixels as the label file's text
    ]
    store = RecordStore()
    try:
        with InputKeys("/x") as keys:
            store.fill(items, keys)
        assert (store.n_rows, store.n_records, store.n_rejects) == (6, 4, 2)
        assert store.splits == ["test", "train"]
        train = [unpack(stored) for stored, _ in store.records("train")]
        assert [r.sample_id for r in train] == ["d:a", "d:b"]
        assert np.array_equal(train[0].pixels, pixels) and train[0].pixels.dtype == np.uint8
        assert train[0].valence == 0.5 and train[0].emotion == 3 and train[0].aligned
        assert train[1] == items[0]  # tuples, AU dict with int keys, extra: all as given
        test = [unpack(stored) for stored, _ in store.records("test")]
        assert test[0].frame_range == (3, 9)
        assert test[1] == replace(items[-1], pixels="0 1 2 255 ü".encode())  # the text as its UTF-8 bytes
        assert [unpack(stored).sample_id for stored, _ in store.records("train", skip=1)] == ["d:b"]
        assert [(r.reason, r.detail) for r in store.rejects()] == [("unparsable_row", "line 3"),
                                                                   ("duplicate_sample_id", "d:a")]
    finally:
        store.close()
    assert not Path(store.path).exists()


def test_streamed_fingerprint_is_the_listed_one(tmp_path: Path) -> None:
    """Resume compatibility: the fingerprint streamed over the store equals `shards.fingerprint` of
    the whole list, the value shards written before the store carry."""
    root = fer2013_csv(tmp_path / "raw", 40)
    with IngestJob("fer2013", root, tmp_path / "out", Settings(size=112)) as job:
        for split in job.splits:
            with InputKeys(root) as keys:
                made = [keys(unpack(stored)) for stored, _ in job.store.records(split)]
                listed = [json.loads(key) for key in keys.resolved(made)]
            assert all(isinstance(key[3], str) and len(key[3]) == 64 for key in listed)  # the CSV's sha256
            streamed = shards.fingerprint_streamed(job.settings.params(), job.keys.resolved(job.store.keys(split)))
            assert streamed == shards.fingerprint(job.settings.params(), listed)
            next(job.chunks(split))
            assert job.writers[split].fingerprint == streamed  # what the job's shards carry


def test_chunking_and_runner_never_change_a_byte(tmp_path: Path) -> None:
    root = fer2013_csv(tmp_path / "raw", 150)
    a = ingest("fer2013", root, tmp_path / "a", size=112, shard_samples=40, workers=1)
    b = ingest("fer2013", root, tmp_path / "b", size=112, shard_samples=40, workers=2, chunk_frames=16, batch_size=16)
    assert (a.n_samples, a.n_rejects) == (150, 0) and (b.n_samples, b.n_rejects) == (150, 0)
    tars = {run: sorted((tmp_path / run / "shards").rglob("*.tar")) for run in "ab"}
    assert len(tars["a"]) == 6  # 50 per usage, 40 per shard
    assert [p.read_bytes() for p in tars["a"]] == [p.read_bytes() for p in tars["b"]]


def test_worker_processes_write_the_thread_paths_bytes(tmp_path: Path) -> None:
    """Chunks in spawned worker processes: the same tars, stats files and catalog as one thread, with
    a bad pixel string a decode reject either way."""
    root = fer2013_csv(tmp_path / "raw", 120)
    with (root / "fer2013.csv").open("a") as f:
        f.write("3,1 2 x,Training\n")
    a = ingest("fer2013", root, tmp_path / "a", size=112, shard_samples=40, workers=1)
    b = ingest("fer2013", root, tmp_path / "b", size=112, shard_samples=40, workers=2, processes=True, chunk_frames=32)
    assert (a.rows_read, a.n_samples, a.n_rejects) == (b.rows_read, b.n_samples, b.n_rejects) == (121, 120, 1)
    files = {run: sorted(p for p in (tmp_path / run / "shards").rglob("*") if p.is_file()) for run in "ab"}
    assert [p.relative_to(tmp_path / "a") for p in files["a"]] == [p.relative_to(tmp_path / "b") for p in files["b"]]
    assert [p.read_bytes() for p in files["a"]] == [p.read_bytes() for p in files["b"]]
    for p in files["a"]:
        if p.name.endswith(shards.STATS_SUFFIX):  # put together from the samples' texts, as meta_json writes it whole
            assert p.read_text() == shards.meta_json(json.loads(p.read_text()))
    for q in ("SELECT * FROM samples ORDER BY sample_id", "SELECT * FROM rejects", "SELECT * FROM shards ORDER BY path"):
        assert catalog.query(a.catalog, q).equals(catalog.query(b.catalog, q)), q
    assert catalog.query(b.catalog, "SELECT stage, reason, detail FROM rejects").values.tolist() == [
        ["decode", "corrupt_image", "pixels holds a value that is not an integer"]]


class Submitted:
    """A runner that counts the records it is sent."""

    def __init__(self, runner: LocalRunner) -> None:
        self.runner, self.n = runner, 0

    def submit(self, settings: Settings, chunk) -> Future:
        self.n += len(chunk)
        return self.runner.submit(settings, chunk)

    def result(self, handle: Future) -> Processed:
        return self.runner.result(handle)


def test_records_processed_while_reading_give_the_same_bytes(tmp_path: Path) -> None:
    """`EarlyStart`: a chunk sent to a worker process while the CSV is still being read (here the first
    32 rows: one chunk at a time, and the read ends before the worker has started) comes back in shard
    order beside the rest; tars, stats and catalog are the thread path's, and the job keeps the same
    worker pool for the rest."""
    root = fer2013_csv(tmp_path / "raw", 300)
    a = ingest("fer2013", root, tmp_path / "a", size=112, shard_samples=40, workers=1)
    settings = Settings(size=112, shard_samples=40, workers=2, processes=True, chunk_frames=32)
    with IngestJob("fer2013", root, tmp_path / "b", settings, early=True) as job:
        assert job.early is not None and (job.early.n_early, job.early.n_records) == (1, 32)
        early_pool = job.early.runner
        start(job)
        with local_runner(job) as runner:
            assert runner is early_pool
            counted = Submitted(runner)
            drive(job, counted, window=4)
        b = job.finish()
    assert counted.n == 300 - 32  # the rest went the ordinary way
    assert (a.rows_read, a.n_samples) == (b.rows_read, b.n_samples) == (300, 300)
    files = {run: sorted(p for p in (tmp_path / run / "shards").rglob("*") if p.is_file()) for run in "ab"}
    assert [p.relative_to(tmp_path / "a") for p in files["a"]] == [p.relative_to(tmp_path / "b") for p in files["b"]]
    assert [p.read_bytes() for p in files["a"]] == [p.read_bytes() for p in files["b"]]
    for q in ("SELECT * FROM samples ORDER BY sample_id", "SELECT * FROM shards ORDER BY path"):
        assert catalog.query(a.catalog, q).equals(catalog.query(b.catalog, q)), q


def test_no_early_start_with_threads_or_a_detector(tmp_path: Path) -> None:
    root = fer2013_csv(tmp_path / "raw", 100)
    for settings in (Settings(size=112, workers=2, processes=False, chunk_frames=16),
                     Settings(size=112, workers=1, processes=True, chunk_frames=16),
                     Settings(size=112, workers=2, processes=True, chunk_frames=16, detector="centerface")):
        with IngestJob("fer2013", root, tmp_path / "out", settings, early=True) as job:
            assert job.early.n_early == 0 and job.early.runner is None, settings


@pytest.mark.parametrize("guarded", [True, False])
def test_a_script_without_a_main_guard_gets_threads(tmp_path: Path, guarded: bool) -> None:
    """A spawned worker runs the main script again: one without `if __name__ == "__main__":` would
    start an ingest in each, so it gets threads and a warning that says how to get processes."""
    call = "print(spawn_safe())"
    script = tmp_path / "mine.py"
    script.write_text("from fer_data.ingest import spawn_safe\n" +
                      (f"if __name__ == '__main__':\n    {call}\n" if guarded else f"{call}\n"))
    got = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == str(guarded)
    assert ("has no `if __name__" in got.stderr) is not guarded


class CountingRunner:
    """Runs chunks at once but hands results over only when asked, counting what is outstanding."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.most = 0
        self.sizes: list[int] = []

    def submit(self, settings: Settings, chunk) -> Future:
        self.outstanding += 1
        self.most = max(self.most, self.outstanding)
        self.sizes.append(len(chunk))
        future: Future = Future()
        future.set_result(process_chunk(settings, chunk))
        return future

    def result(self, handle: Future) -> Processed:
        self.outstanding -= 1
        return handle.result()


def test_drive_keeps_a_bounded_window_of_shard_sized_chunks(tmp_path: Path) -> None:
    root = fer2013_csv(tmp_path / "raw", 300)
    runner = CountingRunner()
    settings = Settings(size=112, shard_samples=32, batch_size=8, chunk_frames=1024)
    with IngestJob("fer2013", root, tmp_path / "out", settings) as job:
        drive(job, runner, window=3)
        result = job.finish()
    assert (result.rows_read, result.n_samples) == (300, 300)
    assert runner.most == 3 and runner.outstanding == 0
    assert max(runner.sizes) == 32  # a chunk is at most a shard's worth, whatever chunk_frames says


def test_bad_settings_are_named_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="detector 'mtcnn'"):
        Settings(detector="mtcnn")
    with pytest.raises(ValueError, match="chunk_frames=0"):
        Settings(chunk_frames=0)


@pytest.mark.parametrize("name", ["k.jpg", "0123456789abcdef01234567.15.jpg", "x" * 99, "x" * 100, "é.json", ""])
@pytest.mark.parametrize("size", [0, 511, 512, 10**6, 8**11 - 1, 8**11])
def test_tar_header_is_tarfiles(name: str, size: int) -> None:
    assert shards._header(name, size) == shards._tarfile_header(name, size)
