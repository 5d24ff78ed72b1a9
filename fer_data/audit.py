"""Leakage audit: perceptual hashes of the aligned crops, near-duplicate groups, and the groups that
cross datasets or splits (FERPlus relabels FER2013, MMA contains FER2013 images, RAF-DB and
AffectNet both come from web search: cross-dataset numbers are only honest once these are known).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagehash
import pandas as pd
from PIL import Image

from fer_data import catalog
from fer_data.shards import read_members

HASH_BITS = 64


def crop_hashes(shard: Path) -> Iterator[tuple[str, int]]:
    """(sample_id, 64-bit pHash) of every sample in a shard; a clip is hashed by its middle frame."""
    for files in read_members(shard).values():
        frames = sorted(k for k in files if k.endswith("jpg"))
        data = files[frames[len(frames) // 2]]
        sample_id = json.loads(files["json"])["sample_id"]
        yield sample_id, int(str(imagehash.phash(Image.open(io.BytesIO(data)))), 16)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def near_duplicate_groups(hashes: list[int], max_distance: int) -> list[int]:
    """Group index of each hash; hashes within `max_distance` bits are linked (transitively).

    Multi-index hashing: split the 64 bits into max_distance + 1 bands; by pigeonhole two
    hashes that close agree exactly on one band, so only bucket-mates are compared.
    """
    bands = max_distance + 1
    edges = [round(i * HASH_BITS / bands) for i in range(bands + 1)]
    uf = _UnionFind()
    for b in range(bands):
        lo, hi = edges[b], edges[b + 1]
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(hashes):
            buckets[(h >> lo) & ((1 << (hi - lo)) - 1)].append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    i, j = members[x], members[y]
                    if (hashes[i] ^ hashes[j]).bit_count() <= max_distance:
                        uf.union(i, j)
    roots = [uf.find(i) for i in range(len(hashes))]
    numbering: dict[int, int] = {}
    return [numbering.setdefault(r, len(numbering)) for r in roots]


@dataclass(frozen=True)
class AuditResult:
    n_hashed: int
    n_groups: int  # groups with more than one sample
    n_cross_dataset: int
    n_cross_split: int


def audit(catalog_path: str | Path, max_distance: int = 4, root: str | Path | None = None) -> AuditResult:
    """Hash every sharded crop into the catalog's `phashes` table (its `duplicates` and `leakage` views
    read it)."""
    catalog_path = Path(catalog_path)
    base = Path(root) if root else catalog_path.resolve().parent
    shards = catalog.query(catalog_path, "SELECT DISTINCT shard FROM samples WHERE shard IS NOT NULL ORDER BY 1").shard
    pairs = [pair for shard in shards for pair in crop_hashes(base / shard)]
    ids = [p[0] for p in pairs]
    hashes = [p[1] for p in pairs]
    groups = near_duplicate_groups(hashes, max_distance)
    phashes = pd.DataFrame({"sample_id": ids, "phash": [f"{h:016x}" for h in hashes], "group_id": groups})
    sizes = phashes.group_id.map(phashes.group_id.value_counts())
    with catalog.rewrite(catalog_path) as con:
        con.register("incoming_hashes", phashes)
        con.execute("DELETE FROM phashes")
        con.execute("INSERT INTO phashes (sample_id, phash, group_id) "
                    "SELECT sample_id, phash, group_id FROM incoming_hashes")
        n_cross_dataset, n_cross_split = con.execute(
            "SELECT count(*) FILTER (n_datasets > 1), count(*) FILTER (n_splits > 1) FROM leakage").fetchone()
    return AuditResult(len(ids), int(phashes.group_id[sizes > 1].nunique()), n_cross_dataset, n_cross_split)
