"""Shards -> batches for training: images [B,3,H,W] or clips [B,T,3,H,W] and a targets dict.

Missing labels become the ignore value of the loss: -100 for class targets, a 0 mask for
AUs and valence/arousal. Shard shuffling, node and worker splitting are always explicit
(WebDataset repeats samples otherwise); a train loader has a fixed epoch length.

The trainer reads its training samples through `make_rank_loader` instead: an index of the shards'
members (`IndexedSamples`) lets every rank and worker read exactly its share of one seeded permutation,
so an epoch is exact over any number of processes, whatever the shards' number and sizes.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import typing
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.gopen import gopen_schemes

from fer_data import catalog
from fer_data.labels import IGNORE_INDEX, NUM_CLASSES
FSSPEC_SCHEMES = ("s3", "s3a", "gcs", "az", "abfs", "abfss", "memory", "file", "hdfs", "webhdfs")


def _fsspec_open(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any):
    return fsspec.open(url, mode).open()


for _scheme in FSSPEC_SCHEMES:  # object stores through fsspec, beside webdataset's own schemes
    gopen_schemes.setdefault(_scheme, _fsspec_open)


def _image(data: bytes) -> torch.Tensor:
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # uint8 [3, H, W]; methods normalise


def targets_of(labels: dict[str, Any], tasks: Sequence[str], aus: Sequence[int]) -> dict[str, torch.Tensor]:
    """One sample's targets with ignore values where a label is missing."""
    out: dict[str, torch.Tensor] = {}
    for task in tasks:
        if task in NUM_CLASSES:
            value = labels.get(task)
            out[task] = torch.tensor(IGNORE_INDEX if value is None else int(value))
        elif task == "valence_arousal":
            v, a = labels.get("valence"), labels.get("arousal")
            known = v is not None and a is not None
            out["valence_arousal"] = torch.tensor([v or 0.0, a or 0.0] if known else [0.0, 0.0])
            out["valence_arousal_mask"] = torch.tensor(float(known))
        elif task == "au":
            present = [labels.get("aus", {}).get(str(au)) for au in aus]
            out["au"] = torch.tensor([float(bool(p)) for p in present])
            out["au_mask"] = torch.tensor([float(p is not None) for p in present])
        elif task == "age":
            age = labels.get("age")
            out["age"] = torch.tensor(float(age) if age is not None else 0.0)
            out["age_mask"] = torch.tensor(float(age is not None))
        else:
            raise ValueError(f"unknown task {task!r}; known: {(*NUM_CLASSES, 'valence_arousal', 'au', 'age')}")
    return out


def _to_example(sample: dict[str, Any], tasks: Sequence[str], aus: Sequence[int]) -> tuple[torch.Tensor, dict]:
    labels = json.loads(sample["json"])
    frames = sorted(k for k in sample if k.endswith(".jpg") and k != "jpg")
    if "jpg" in sample:
        pixels = _image(sample["jpg"])
    else:  # a clip: "<key>.00.jpg" ... -> [T, 3, H, W]
        pixels = torch.stack([_image(sample[k]) for k in frames])
    return pixels, {**targets_of(labels, tasks, aus), "sample_id": labels["sample_id"]}


def _selected(ids: frozenset[str], sample: dict[str, Any]) -> bool:
    return json.loads(sample["json"])["sample_id"] in ids


def _collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Stacked pixels and targets. Clips of different lengths (a sampling other than `tsn`:
    `fer_data.sampling`) are padded to the batch's longest by repeating their last frame, and
    `targets["n_frames"]` says how many of each clip's frames are its own."""
    frames = [b[0] for b in batch]
    if frames[0].dim() == 4:  # clips [T, 3, H, W]
        longest = max(f.shape[0] for f in frames)
        lengths = torch.tensor([f.shape[0] for f in frames])
        frames = [torch.cat([f, f[-1:].expand(longest - f.shape[0], *f.shape[1:])]) for f in frames]
    pixels = torch.stack(frames)
    keys = [k for k in batch[0][1] if k != "sample_id"]
    targets: dict[str, Any] = {k: torch.stack([b[1][k] for b in batch]) for k in keys}
    if pixels.dim() == 5:
        targets["n_frames"] = lengths
    targets["sample_id"] = [b[1]["sample_id"] for b in batch]
    return pixels, targets


def samples_source(fold: int | None = None) -> str:
    """The relation a selection's WHERE reads: `samples`, or for a k-fold protocol the samples that
    have a fold, with `split` recomputed as 'test' for fold k and 'train' for the others, so the
    same `split = 'train'` clauses serve every fold."""
    if fold is None:
        return "samples"
    held_out = f"TRY_CAST(extra->>'fold' AS INTEGER) = {int(fold)}"
    return (f"(SELECT * REPLACE (CASE WHEN {held_out} THEN 'test' ELSE 'train' END AS split) FROM samples "
            "WHERE TRY_CAST(extra->>'fold' AS INTEGER) IS NOT NULL)")


def sample_shards(catalog_path: str | Path, where: str, root: str | Path | None = None,
                  fold: int | None = None) -> dict[str, str]:
    """sample id -> URL of its shard, for a SQL selection over `samples` (e.g. "dataset='rafdb' AND
    split='train'"); with `fold`, over `samples_source(fold)`.

    Shard paths in the catalog are relative to the folder holding it, unless `root` says otherwise
    (a local folder or an fsspec URL such as s3://bucket/data). `where` comes from config files and
    the command line: it must be one SQL expression (`catalog.expression`), run read-only.
    """
    df = catalog.query(catalog_path, f"SELECT sample_id, shard FROM {samples_source(fold)} AS samples "
                                     f"WHERE shard IS NOT NULL AND {catalog.expression(where)}")
    if df.empty:
        raise ValueError(f"no sharded samples in {catalog_path} match: {where}" + (f" (fold {fold})" if fold else ""))
    base = str(root if root is not None else Path(catalog_path).resolve().parent).rstrip("/")
    return {sample_id: f"{base}/{shard}" for sample_id, shard in zip(df.sample_id, df.shard)}


def select(catalog_path: str | Path, where: str, root: str | Path | None = None,
           fold: int | None = None) -> tuple[list[str], set[str]]:
    """Shard URLs and sample ids of a selection (`sample_shards`)."""
    shard_of = sample_shards(catalog_path, where, root, fold)
    return sorted(set(shard_of.values())), set(shard_of)


def au_rates(catalog_path: str | Path, where: str, aus: Sequence[int] = (),
             fold: int | None = None) -> dict[int, float]:
    """AU -> occurrence rate among the selection's labelled samples (the `au_occurrence` view's rate,
    over any selection): what AU losses weight by. Empty `aus`: every AU labelled in the selection."""
    only = f"AND a.au IN ({', '.join(str(int(au)) for au in aus)})" if aus else ""
    df = catalog.query(catalog_path, f"""
        SELECT a.au, count(*) FILTER (a.present) / count(a.present) AS rate
        FROM au_labels a JOIN {samples_source(fold)} AS samples USING (sample_id)
        WHERE a.present IS NOT NULL AND {catalog.expression(where)} {only}
        GROUP BY a.au ORDER BY a.au""")
    return {int(au): float(rate) for au, rate in zip(df.au, df.rate)}


def _worker_context(num_workers: int) -> str | None:
    """forkserver, not fork: the loader often runs inside a Prefect flow, whose threads a fork would copy.
    Workers restart every epoch; preloading torch and this module in the server makes that 0.1 s, not
    8 s of imports per worker (Python 3.11's forkserver does not preload __main__'s imports)."""
    if not num_workers:
        return None
    multiprocessing.set_forkserver_preload(["torch", "fer_data.loaders"])
    return "forkserver"


def make_loader(
    urls: str | Sequence[str],
    tasks: Sequence[str] = ("emotion",),
    batch_size: int = 32,
    train: bool = True,
    num_workers: int = 0,
    aus: Sequence[int] = (),
    epoch_samples: int | None = None,
    sample_ids: set[str] | None = None,
    shuffle_buffer: int = 1000,
    seed: int = 0,
) -> wds.WebLoader:
    """A loader over WebDataset shards. Train: shuffled shards and samples, repeated to `epoch_samples`
    per epoch (default: one pass), shards split over the ranks of a process group. Eval: every sample once,
    in shard order, last batch kept, in whichever process reads it.
    `sample_ids` restricts to a selection (see `select`)."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    dataset = wds.WebDataset(
        urls,
        shardshuffle=len(urls) if train else False,
        nodesplitter=wds.split_by_node if train else None,  # one rank scores the whole set
        workersplitter=wds.split_by_worker,
        seed=seed,
        empty_check=False,
        repeat=train and epoch_samples is not None,
    )
    if sample_ids is not None:
        dataset = dataset.select(partial(_selected, frozenset(sample_ids)))
    if train:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed)
    dataset = dataset.map(partial(_to_example, tasks=tuple(tasks), aus=tuple(aus)))
    dataset = dataset.batched(batch_size, collation_fn=_collate, partial=not train)
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=num_workers,
                           multiprocessing_context=_worker_context(num_workers), persistent_workers=False)
    if train and epoch_samples is not None:
        loader = loader.with_epoch(max(1, epoch_samples // batch_size))  # batches, over all workers
    return loader


# Training over several processes: exact epochs from an index of the shards ------------------------------


class IndexedSamples(torch.utils.data.Dataset):
    """The selected samples by position in a sorted id list, each read straight from its shard by offset
    (one seek a member): any order, any split over ranks and workers, no shard read twice an epoch.
    An item is a `Slot`; a padding slot's sample comes back with `pad` set (the trainer weighs it 0).

    `cache_bytes`: decoded samples are kept, up to that many bytes of pixels, for the later epochs of
    a run that reads them in this process (no loader workers: theirs restart every epoch). A set that
    fits is then decoded once, not once an epoch (a 16-frame clip is 16 JPEG decodes); pixels are the
    same tensors either way, and augmentation works on the batch, after them."""

    def __init__(self, shard_of: dict[str, str], tasks: Sequence[str] = ("emotion",), aus: Sequence[int] = (),
                 cache_bytes: int = 0) -> None:
        from fer_data.shards import index_shard, sample_key

        self.ids = sorted(shard_of)
        self.tasks, self.aus = tuple(tasks), tuple(aus)
        indexes = {url: index_shard(url) for url in sorted(set(shard_of.values()))}
        missing = [i for i in self.ids if sample_key(i) not in indexes[shard_of[i]]]
        if missing:
            raise ValueError(f"{len(missing)} selected samples are not in their shards (a stale catalog?), "
                             f"e.g. {missing[0]} in {shard_of[missing[0]]}")
        self.where = [(shard_of[i], indexes[shard_of[i]][sample_key(i)]) for i in self.ids]
        self._files: dict[str, Any] = {}  # this process's open shards
        self.cache_bytes = cache_bytes
        self._decoded: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}
        self._decoded_bytes = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:  # workers open their own files and keep no decoded samples
        return {**self.__dict__, "_files": {}, "_decoded": {}, "_decoded_bytes": 0, "cache_bytes": 0}

    def _read(self, url: str, offset: int, size: int) -> bytes:
        if url not in self._files:
            self._files[url] = fsspec.open(url, "rb").open()
        f = self._files[url]
        f.seek(offset)
        return f.read(size)

    def __getitem__(self, slot: "Slot") -> tuple[torch.Tensor, dict[str, Any]]:
        example = self._decoded.get(slot.index)
        if example is None:
            url, members = self.where[slot.index]
            example = _to_example({ext: self._read(url, *at) for ext, at in members.items()}, self.tasks, self.aus)
            size = example[0].nbytes
            if self._decoded_bytes + size <= self.cache_bytes:
                self._decoded[slot.index] = example
                self._decoded_bytes += size
        pixels, targets = example
        return pixels, {**targets, "pad": torch.tensor(slot.pad), "batch_total": torch.tensor(slot.batch_total)}


class Slot(typing.NamedTuple):
    """One place in a rank's batch: the sample, whether it only pads an empty share, and how many real
    samples the global batch holds over all ranks (what the trainer weighs this rank's loss against)."""

    index: int
    pad: bool
    batch_total: int


def epoch_order(n: int, seed: int, epoch_samples: int | None = None) -> list[int]:
    """Positions of `n` samples in the epoch seeded by `seed`: one permutation, the same on every rank
    (`epoch_samples` past n: further permutations, cut at epoch_samples)."""
    total = epoch_samples or n
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < total:
        order += torch.randperm(n, generator=generator).tolist()
    return order[:total]


def rank_batches(order: Sequence[int], batch_size: int, rank: int = 0, world: int = 1) -> list[list[Slot]]:
    """This rank's batches of an epoch: `order` cut into ceil(len / batch_size) global batches of
    near-equal size (no short last batch), each dealt over the ranks in turn, so every rank takes the
    same number of steps and together they read each position of `order` once. A rank whose share of
    a batch is empty (a global batch smaller than the world) gets one padding slot."""
    n_batches = math.ceil(len(order) / batch_size)
    bounds = [round(i * len(order) / n_batches) for i in range(n_batches + 1)]
    batches = []
    for start, end in zip(bounds, bounds[1:]):
        mine = order[start + rank:end:world]
        batches.append([Slot(i, False, end - start) for i in mine] or [Slot(order[start], True, end - start)])
    return batches


def make_rank_loader(dataset: IndexedSamples, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                     epoch_samples: int | None = None, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """One epoch of training batches for this rank (`rank_batches` over `epoch_order`): together the
    ranks see every selected sample once (epoch_samples: that many, the selection repeated as needed),
    in the same global batches whatever the number of ranks."""
    batches = rank_batches(epoch_order(len(dataset), seed, epoch_samples), batch_size, rank, world)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=_collate, num_workers=num_workers,
                                       multiprocessing_context=_worker_context(num_workers))
