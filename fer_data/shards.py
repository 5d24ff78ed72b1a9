"""Deterministic, resumable, versioned WebDataset tar shards. Knows files and keys, never dataset names.

Each split's shards live in a folder named by its fingerprint (`version_dir`): a re-ingest with other
inputs or settings writes a new folder while readers keep the old one, and `prune` removes the old
only after the catalog points at the new.

Same samples in the same order and the same limits give byte-identical tars: members are
written with fixed metadata (mtime 0, uid/gid 0, mode 0644, GNU format). A shard is complete
only once its stats file exists; the stats file is renamed into place after the tar is, so
a run killed at any point resumes from the last complete shard without duplicates or loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

STATS_SUFFIX = ".stats.json"


def sample_key(sample_id: str) -> str:
    """WebDataset key of a sample: stable, dot-free, independent of its position."""
    return hashlib.sha1(sample_id.encode()).hexdigest()[:24]


Members = dict[str, tuple[int, int]]  # a sample's members in its tar: extension -> (data offset, size)


def index_shard(url: str | Path) -> dict[str, Members]:
    """WebDataset key -> its members' positions, from the tar's headers (the data is skipped, not read);
    `url` is a local path or an fsspec URL."""
    import fsspec

    index: dict[str, Members] = {}
    with fsspec.open(str(url), "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if member.isfile():
                key, _, ext = member.name.partition(".")
                index.setdefault(key, {})[ext] = (member.offset_data, member.size)
    return index


def read_members(shard: Path, wanted: Callable[[str, str], bool] | None = None) -> dict[str, dict[str, bytes]]:
    """A shard's files by sample key, {key: {extension: bytes}}, read by their `index_shard` offsets;
    `wanted(key, extension)` says which are read (the others are skipped, not read)."""
    members: dict[str, dict[str, bytes]] = {}
    with open(shard, "rb") as f:
        for key, at in index_shard(shard).items():
            for ext, (offset, size) in at.items():
                if wanted is None or wanted(key, ext):
                    f.seek(offset)
                    members.setdefault(key, {})[ext] = f.read(size)
    return members


def _tarfile_header(name: str, size: int) -> bytes:
    """A member's GNU tar header with fixed metadata, as `TarFile.addfile` encodes it."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape")


_TEMPLATE = _tarfile_header("", 0)  # every field but name, size and checksum as tarfile writes them
_NAME, _SIZE, _CHKSUM = slice(0, 100), slice(124, 136), slice(148, 156)
_TEMPLATE_SUM = sum(_TEMPLATE) - sum(_TEMPLATE[_NAME]) - sum(_TEMPLATE[_SIZE]) - sum(_TEMPLATE[_CHKSUM])


def _header(name: str, size: int) -> bytes:
    """`_tarfile_header(name, size)`, byte for byte, without tarfile's per-field Python (150 µs a
    sample at two members): the template with name, size and checksum filled in. Names that are not
    short ASCII, or sizes past 8 GiB, take tarfile's own path (long-name and base-256 extensions)."""
    if len(name) >= 100 or not name.isascii() or size >= 8**11:
        return _tarfile_header(name, size)
    raw_name = name.encode().ljust(100, b"\0")
    raw_size = b"%011o\0" % size
    chksum = _TEMPLATE_SUM + sum(raw_name) + sum(raw_size) + 8 * 32  # the checksum field counts as spaces
    return b"".join((raw_name, _TEMPLATE[100:124], raw_size, _TEMPLATE[136:148], b"%06o\0 " % chksum,
                     _TEMPLATE[156:]))


@dataclass(frozen=True)
class Sample:
    """One sample's tar members as bytes (header, data and NUL padding each) and its payload size.

    `encode_sample` builds them wherever the sample is made (a worker thread, a Dask worker), so
    the ordered writer only appends them to the open shard: tarfile's header building (tens of µs
    of Python a member) on the write path held up every worker of a pre-aligned ingest.
    """

    blob: bytes
    size: int  # bytes of the files, what `max_bytes` counts


def encode_sample(key: str, files: dict[str, bytes]) -> Sample:
    """`key.ext` members in extension order, byte for byte what `TarFile.addfile` writes for them."""
    parts = []
    for ext, data in sorted(files.items()):
        parts += [_header(f"{key}.{ext}", len(data)), data, tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE)]
    return Sample(b"".join(parts), sum(len(v) for v in files.values()))


def _end_of_archive(size: int) -> bytes:
    """What `TarFile.close` appends to `size` bytes of members: two zero blocks, zeros up to a whole record."""
    end = 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (end + -(size + end) % tarfile.RECORDSIZE)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class ShardWriter:
    """Writes `<prefix>-00000.tar`, ... into `directory`, cutting at `max_samples` or `max_bytes`.

    `add` takes one sample (its members, from `encode_sample`) and its metadata; `carry` notes
    anything else decided while reading up to this point (rejects). Both land in the shard's
    stats file, which is how a resumed run learns what was already done. Metadata comes as JSON
    text (`meta_json`), made where the sample was made: the stats file is then put together from
    the texts, the same bytes as dumping the objects here, without the writer's time on them.
    `done` keeps only each complete shard's summary (`read_stats` gives the rest back), so a
    writer's memory is one shard's metadata whatever the dataset's size.

    Samples stream into the shard's temp file and running sha256 as they come, so hashing and
    writing overlap the workers instead of stalling them at the cut, and a 256 MiB shard is
    never held in memory; the temp file is renamed into place when the shard is cut.
    """

    directory: Path
    prefix: str
    fingerprint: str
    max_samples: int = 1000
    max_bytes: int = 256 * 2**20
    _file: BinaryIO | None = field(default=None, init=False)  # the open shard's temp file
    _hash: Any = field(default=None, init=False)  # its running sha256
    _size: int = field(default=0, init=False)  # its bytes so far
    _samples: list[str] = field(default_factory=list, init=False)  # JSON texts
    _carried: list[str] = field(default_factory=list, init=False)
    _bytes: int = field(default=0, init=False)
    done: list[dict[str, Any]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.done = list(self._completed())
        self._remove_incomplete()

    def _name(self, index: int) -> str:
        return f"{self.prefix}-{index:05d}.tar"

    def _completed(self) -> Iterator[dict[str, Any]]:
        """Stats of the complete shards 0..k-1 written with this fingerprint, in order."""
        index = 0
        while True:
            stats_path = self.directory / (self._name(index) + STATS_SUFFIX)
            tar_path = self.directory / self._name(index)
            if not (stats_path.is_file() and tar_path.is_file()):
                return
            stats = orjson.loads(stats_path.read_bytes())
            if stats["fingerprint"] != self.fingerprint or stats["bytes"] != tar_path.stat().st_size:
                return
            yield _summary(stats)
            index += 1

    def _remove_incomplete(self) -> None:
        """Tars without stats, temp files and shards of another fingerprint: none of them count."""
        keep = {s["shard"] for s in self.done} | {s["shard"] + STATS_SUFFIX for s in self.done}
        for path in self.directory.glob(f"{self.prefix}-*"):
            if path.name not in keep:
                path.unlink()

    @property
    def n_processed(self) -> int:
        """Items the complete shards account for (samples and carried): the first that many of the
        inputs in write order, since shards are cut in that order."""
        return sum(s["n_samples"] + s["n_carried"] for s in self.done)

    def read_stats(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The whole stats of a shard in `done` (its samples' and carried items' metadata)."""
        if summary["shard"] is None:
            return summary
        return orjson.loads((self.directory / (summary["shard"] + STATS_SUFFIX)).read_bytes())

    def add(self, blob: bytes, size: int, meta: str) -> None:
        """One sample: its tar members (`Sample.blob`), their payload size (`Sample.size`), its metadata."""
        if self._samples and (len(self._samples) >= self.max_samples or self._bytes + size > self.max_bytes):
            self._flush()
        if self._file is None:
            self._file = open(self.directory / (self._name(len(self.done)) + ".tmp"), "wb")
            self._hash = hashlib.sha256()
        self._append(blob)
        self._samples.append(meta)
        self._bytes += size

    def carry(self, item: str) -> None:
        self._carried.append(item)

    def _append(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def _flush(self) -> None:
        name = self._name(len(self.done))
        self._append(_end_of_archive(self._size))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._file.name, self.directory / name)
        summary = {"bytes": self._size, "fingerprint": self.fingerprint, "n_samples": len(self._samples),
                   "sha256": self._hash.hexdigest(), "shard": name}
        lists = {"carried": self._carried, "samples": self._samples}
        _write_atomic(self.directory / (name + STATS_SUFFIX), _stats_json({**summary, **lists}).encode())
        self.done.append({**summary, "n_carried": len(self._carried)})
        self._file, self._hash, self._size = None, None, 0
        self._samples, self._carried, self._bytes = [], [], 0

    def abandon(self) -> None:
        """Close the unfinished shard's temp file without completing it (a resumed run deletes it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> list[dict[str, Any]]:
        """Flush the last shard; leftover carried items with no sample after them get a stats-only entry."""
        if self._samples:
            self._flush()
        elif self._carried:
            self.done.append({"shard": None, "n_samples": 0, "n_carried": len(self._carried), "samples": [],
                              "carried": [orjson.loads(c) for c in self._carried]})
            self._carried = []
        return self.done


def meta_json(meta: Any) -> str:
    """A sample's or carried item's metadata as its shard's stats file holds it: orjson's compact JSON,
    keys sorted (a fifth of the time `json.dumps` took, 4 % of processing an aligned JPEG). Plain
    values only: a NaN would read back as null, and adapters give none (`labels.valid_affect`)."""
    return orjson.dumps(meta, option=orjson.OPT_SORT_KEYS).decode()


def _stats_json(stats: dict[str, Any]) -> str:
    """`meta_json(stats)` of a shard's stats whose lists hold `meta_json` texts, byte for byte: a JSON
    list is its items' texts joined by commas."""
    return "{" + ",".join(f"{meta_json(k)}:" + (f"[{','.join(v)}]" if isinstance(v, list) else meta_json(v))
                          for k, v in sorted(stats.items())) + "}"


def _summary(stats: dict[str, Any]) -> dict[str, Any]:
    """A complete shard's stats without the per-item lists."""
    return {**{k: v for k, v in stats.items() if k not in ("samples", "carried")}, "n_carried": len(stats["carried"])}


def version_dir(split: str, fingerprint: str) -> str:
    """The folder, inside a dataset's shard folder, of one split's shard set: named by the split and
    its fingerprint, so a re-ingest writes beside the shards the catalog still points at."""
    return f"{split}-{fingerprint[:16]}"


def prune(directory: Path, keep: Iterable[str]) -> None:
    """Delete everything in a dataset's shard folder but `_info.json` and the version folders in
    `keep`: run once the catalog points at those, so no reader ever loses a shard it was given.

    Older versions, abandoned partial ones and a split that lost all its records go; left there, a
    glob over the folder would feed a loader samples the catalog no longer has.
    """
    keep = set(keep)
    for path in Path(directory).iterdir():
        if path.name == "_info.json" or (path.name in keep and path.is_dir()):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def write_info(directory: Path, info: dict[str, Any]) -> None:
    """`_info.json` of a shard set: counts per split, fingerprint, label spaces, shard list."""
    _write_atomic(Path(directory) / "_info.json", json.dumps(info, indent=2, sort_keys=True).encode())


# One encoder, made once: `json.dumps` with arguments builds one a call (a third of its time on a
# record's input key). The same class and options, so the same text.
_FINGERPRINT_JSON = json.JSONEncoder(sort_keys=True, default=str)


def fingerprint_json(value: Any) -> str:
    """The JSON text `fingerprint` hashes for a value (`json.dumps(value, sort_keys=True, default=str)`)."""
    return _FINGERPRINT_JSON.encode(value)


def fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of everything that decides a shard set's bytes (inputs and parameters)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(fingerprint_json(part).encode())
    return h.hexdigest()


def fingerprint_streamed(head: Any, items: Iterable[str]) -> str:
    """`fingerprint(head, [item, ...])` from each item's `fingerprint_json` text, one at a time, so a
    million inputs never stand in one list."""
    h = hashlib.sha256(fingerprint_json(head).encode())
    h.update(b"[")
    for i, item in enumerate(items):
        h.update(b", " + item.encode() if i else item.encode())
    h.update(b"]")
    return h.hexdigest()
