"""The adapter's rows on disk: an ingest reads a release once and then walks it in shard order
without holding it, so its memory does not grow with the dataset (AffectNet's 290k records, a
1M-row CSV with pixels inside).

A temporary SQLite file keyed by sample id: records come back per split in sample-id order (the
order shards are written in), and the key finds a repeated id (the first row wins, later ones
become rejects). Records are stored as JSON plus the bytes of the pixels a record carries: decoded,
with their dtype and shape in the JSON, or their text (FER2013's) in UTF-8, or only where the label
file holds that text (`TextSpan`, in the JSON): nothing in the file runs as code.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np

from fer_data.records import Record, Reject, TextSpan

_COMMIT_EVERY = 10_000  # rows per insert transaction


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a record (landmarks an adapter computed) as JSON numbers, same values."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} in a record is not JSON")


_JSON = json.JSONEncoder(default=_plain)  # made once, not per `json.dumps` call


def _pack(rec: Record) -> tuple[str, bytes | None]:
    values = dict(rec.__dict__)  # every field (a Record has no slots): 0.4-0.5 µs, a getattr each took 0.9-1.4
    del values["pixels"]
    values["aus"] = [[au, present, intensity] for au, (present, intensity) in rec.aus.items()]
    if rec.pixels is None:
        return _JSON.encode(values), None
    if isinstance(rec.pixels, TextSpan):  # where a label file holds the text: three values, not 9 KB
        values["pixels"] = ["span", *rec.pixels]
        return _JSON.encode(values), None
    if isinstance(rec.pixels, str | bytes):  # beside the JSON, not in it: JSON-escaping 9 KB of digits was most of a row's time
        values["pixels"] = "text"
        return _JSON.encode(values), rec.pixels if isinstance(rec.pixels, bytes) else rec.pixels.encode()
    pixels = np.ascontiguousarray(rec.pixels)
    values["pixels"] = [pixels.dtype.str, pixels.shape]
    return _JSON.encode(values), pixels.tobytes()


Stored = tuple[str, bytes | None]  # a record as the store keeps it: JSON text, raw pixel bytes
Done = tuple[str, bytes | None, int | None, str]  # a processed record: sample_id, tar members, their size, stats text (`ingest.written`)


def unpack(stored: Stored) -> Record:
    """The record back from its stored form (in whichever process works on it: the form is two
    strings, cheap to send, where a Record with its pixels and tuples takes the driver's time)."""
    text, pixels = stored
    values: dict[str, Any] = json.loads(text)
    values["aus"] = {au: (present, intensity) for au, present, intensity in values["aus"]}
    for name in ("face_box", "frame_range"):
        if values[name] is not None:
            values[name] = tuple(values[name])
    if values["landmarks"] is not None:
        values["landmarks"] = tuple(tuple(p) for p in values["landmarks"])
    if isinstance(values.get("pixels"), list) and values["pixels"][0] == "span":
        values["pixels"] = TextSpan(*values["pixels"][1:])
    elif values.get("pixels") == "text":
        values["pixels"] = pixels  # the text's UTF-8 bytes: `decode.text_pixels` parses them as they are
    elif pixels is not None:
        dtype, shape = values["pixels"]
        values["pixels"] = np.frombuffer(pixels, dtype=np.dtype(dtype)).reshape(shape).copy()  # writable, as read
    return Record(**values)


class RecordStore:
    """Every row of an adapter, read once (`fill`): records by split in sample-id order, rejects in read order.

    `key(rec)` is a text identity stored beside each record (the input fingerprint's item), so
    a split's fingerprint is one pass over short strings, not over the records again.
    """

    def __init__(self) -> None:
        fd, self.path = tempfile.mkstemp(prefix="fer-ingest-", suffix=".sqlite")
        os.close(fd)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.executescript("""
                PRAGMA page_size = 65536; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
                CREATE TABLE records (sample_id TEXT NOT NULL UNIQUE, split TEXT NOT NULL, rec TEXT NOT NULL,
                                      pixels BLOB, key TEXT NOT NULL);
                CREATE TABLE rejects (reject TEXT NOT NULL);
                CREATE TABLE done (sample_id TEXT PRIMARY KEY, sample BLOB, size INTEGER, meta TEXT NOT NULL);
            """)
        except BaseException:
            self.close()
            raise
        self.n_rows = self.n_records = self.n_rejects = 0

    def fill(self, items: Iterable[Record | Reject], key: Callable[[Record], str],
             seen: Callable[[Record, Stored], None] = lambda rec, stored: None) -> None:
        """Every row of `items`, once; `seen` gets each record kept, in read order, as it is stored
        (it may `put_done` results meanwhile)."""
        db = self._db
        db.execute("BEGIN")
        for item in items:
            self.n_rows += 1
            if isinstance(item, Record):
                stored = _pack(item)
                try:
                    db.execute("INSERT INTO records VALUES (?, ?, ?, ?, ?)",
                               (item.sample_id, item.split, *stored, key(item)))
                except sqlite3.IntegrityError:
                    item = Reject(item.dataset, item.source_path, "adapter", "duplicate_sample_id", item.sample_id)
                else:
                    self.n_records += 1
                    seen(item, stored)
            if isinstance(item, Reject):
                db.execute("INSERT INTO rejects VALUES (?)", (json.dumps(asdict(item)),))
                self.n_rejects += 1
            if self.n_rows % _COMMIT_EVERY == 0:
                db.execute("COMMIT")
                db.execute("BEGIN")
        db.execute("COMMIT")
        db.execute("CREATE INDEX by_split ON records (split, sample_id)")

    def put_done(self, rows: Iterable[Done]) -> None:
        """Records already processed (`fer_data.ingest.EarlyStart`), handed back by `records` so that
        they are not processed again."""
        self._db.executemany("INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?)", rows)

    @property
    def splits(self) -> list[str]:
        return [s for (s,) in self._db.execute("SELECT DISTINCT split FROM records ORDER BY split")]

    def keys(self, split: str) -> Iterator[str]:
        """The stored keys (JSON text) of `split` in sample-id order."""
        for (key,) in self._db.execute("SELECT key FROM records WHERE split = ? ORDER BY sample_id", (split,)):
            yield key

    def records(self, split: str, skip: int = 0) -> Iterator[tuple[Stored, Done | None]]:
        """`split`'s records in sample-id order, after the first `skip` (a resumed run's done part), in
        stored form (`unpack` makes each a Record), each with its result if `put_done` gave one."""
        for text, pixels, sample_id, sample, size, meta in self._db.execute(
                "SELECT r.rec, r.pixels, d.sample_id, d.sample, d.size, d.meta FROM records r "
                "LEFT JOIN done d USING (sample_id) WHERE r.split = ? ORDER BY r.sample_id LIMIT -1 OFFSET ?",
                (split, skip)):
            yield (text, pixels), None if sample_id is None else (sample_id, sample, size, meta)

    def rejects(self) -> Iterator[Reject]:
        for (text,) in self._db.execute("SELECT reject FROM rejects ORDER BY rowid"):
            yield Reject(**json.loads(text))

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
            self._db = None
        if os.path.exists(self.path):
            os.unlink(self.path)
