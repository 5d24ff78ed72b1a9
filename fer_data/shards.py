"""Deterministic, resumable WebDataset tar shards. Knows files and keys, never dataset names.

Same samples in the same order and the same limits give byte-identical tars: members are
written with fixed metadata (mtime 0, uid/gid 0, mode 0644, GNU format). A shard is complete
only once its stats file exists; the stats file is renamed into place after the tar is, so
a run killed at any point resumes from the last complete shard without duplicates or loss.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATS_SUFFIX = ".stats.json"


def sample_key(sample_id: str) -> str:
    """WebDataset key of a sample: stable, dot-free, independent of its position."""
    return hashlib.sha1(sample_id.encode()).hexdigest()[:24]


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


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

    `add` takes one sample's files (extension -> bytes) and a metadata dict; `carry` notes
    anything else decided while reading up to this point (rejects). Both land in the shard's
    stats file, which is how a resumed run learns what was already done.
    """

    directory: Path
    prefix: str
    fingerprint: str
    max_samples: int = 1000
    max_bytes: int = 256 * 2**20
    _members: list[tuple[str, bytes]] = field(default_factory=list, init=False)
    _samples: list[dict[str, Any]] = field(default_factory=list, init=False)
    _carried: list[dict[str, Any]] = field(default_factory=list, init=False)
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
            stats = json.loads(stats_path.read_text())
            if stats["fingerprint"] != self.fingerprint or stats["bytes"] != tar_path.stat().st_size:
                return
            yield stats
            index += 1

    def _remove_incomplete(self) -> None:
        """Tars without stats, temp files and shards of another fingerprint: none of them count."""
        keep = {s["shard"] for s in self.done} | {s["shard"] + STATS_SUFFIX for s in self.done}
        for path in self.directory.glob(f"{self.prefix}-*"):
            if path.name not in keep:
                path.unlink()

    @property
    def processed_ids(self) -> set[str]:
        """Ids of everything the complete shards account for: samples and carried items."""
        return {item["sample_id"] for s in self.done for item in s["samples"] + s["carried"]}

    def add(self, key: str, files: dict[str, bytes], meta: dict[str, Any]) -> None:
        size = sum(len(v) for v in files.values())
        if self._members and (len(self._samples) >= self.max_samples or self._bytes + size > self.max_bytes):
            self._flush()
        for ext, data in sorted(files.items()):
            self._members.append((f"{key}.{ext}", data))
        self._samples.append(meta)
        self._bytes += size

    def carry(self, item: dict[str, Any]) -> None:
        self._carried.append(item)

    def _flush(self) -> None:
        name = self._name(len(self.done))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for member, data in self._members:
                tar.addfile(*_member(member, data))
        data = buf.getvalue()
        stats = {
            "shard": name,
            "n_samples": len(self._samples),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "fingerprint": self.fingerprint,
            "samples": self._samples,
            "carried": self._carried,
        }
        _write_atomic(self.directory / name, data)
        _write_atomic(self.directory / (name + STATS_SUFFIX), json.dumps(stats, sort_keys=True).encode())
        self.done.append(stats)
        self._members, self._samples, self._carried, self._bytes = [], [], [], 0

    def close(self) -> list[dict[str, Any]]:
        """Flush the last shard; leftover carried items with no sample after them get a stats-only entry."""
        if self._members:
            self._flush()
        elif self._carried:
            self.done.append({"shard": None, "n_samples": 0, "samples": [], "carried": self._carried})
            self._carried = []
        return self.done


def write_info(directory: Path, info: dict[str, Any]) -> None:
    """`_info.json` of a shard set: counts per split, fingerprint, label spaces, shard list."""
    _write_atomic(Path(directory) / "_info.json", json.dumps(info, indent=2, sort_keys=True).encode())


def fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of everything that decides a shard set's bytes (inputs and parameters)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()
