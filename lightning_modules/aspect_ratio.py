"""Training batches of one orientation (mmdet's ``AspectRatioBatchSampler``), under Lightning.

A batch is padded to its largest height and its largest width, so a batch that mixes a portrait
and a landscape image pays for a square of the longer side: at COCO's usual 4:3 that is about
a quarter of the batch's pixels spent on padding. :class:`AspectRatioBatches` groups the indices
its sampler yields into two buckets, landscape or square (width >= height) and portrait, and
emits a bucket as a batch once it holds ``batch_size`` indices.

How it fits Lightning's DDP: it subclasses ``torch.utils.data.BatchSampler`` and takes its
per-process indices from ``sampler``. In one process that is the data module's ``RandomSampler``
(``SequentialSampler`` without shuffling). Under DDP Lightning re-instantiates it with its own
``DistributedSampler`` in place of ``sampler`` (``use_distributed_sampler``, on by default): each
process then groups its own shard, a seeded permutation that depends on the epoch (Lightning
calls ``set_epoch`` on ``batch_sampler.sampler`` before every epoch, resumed ones included) and
is padded to the same length on every process.

Leftovers, decided so that the number of batches depends on the shard's length only, hence is
the same on every process (``len(self)``, which ``estimated_stepping_batches`` and with it
epoch-to-iteration schedules use): after the last index each bucket holds fewer than
``batch_size`` indices, ``a`` and ``b``. Without ``drop_last`` they become ``ceil((a + b) /
batch_size)`` batches: one mixed batch when both fit in one, otherwise each bucket's leftovers as
its own smaller batch of one orientation (mmdet instead fills a full mixed batch first). With
``drop_last``, one full batch when ``a + b >= batch_size`` (the larger bucket, topped up from the
other), none otherwise. So every index of the shard is yielded once per epoch (without
``drop_last``), and ``len(self)`` is ``ceil(len(sampler) / batch_size)`` (``floor`` with it), as
for a plain ``BatchSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import BatchSampler, Sampler

__all__ = ["AspectRatioBatches", "orientation", "padding_fraction"]

LANDSCAPE, PORTRAIT = 0, 1


def orientation(width: int, height: int) -> int:
    """The bucket of an image: ``LANDSCAPE`` (0) for width >= height, ``PORTRAIT`` (1)."""
    return LANDSCAPE if width >= height else PORTRAIT


class AspectRatioBatches(BatchSampler):
    """Batches of ``batch_size`` indices from ``sampler``, each of one orientation (see the
    module's docstring for the last batches of an epoch).

    Args:
        sampler: the per-process indices (Lightning puts its ``DistributedSampler`` here).
        batch_size: indices per batch.
        drop_last: leave out a last incomplete batch.
        dataset: where the orientations come from (``get_data_info(i)['width' / 'height']``, as
            mmdet's sampler reads them); by default the sampler's ``dataset`` or
            ``data_source``.
    """

    def __init__(self, sampler: Sampler[int] | Iterable[int], batch_size: int,
                 drop_last: bool = False, dataset: object | None = None):
        super().__init__(sampler, batch_size, drop_last)
        self.dataset = dataset
        self._flags: np.ndarray | None = None  # per dataset index, -1 until first looked up

    def _source(self) -> object:
        source = self.dataset
        if source is None:
            source = getattr(self.sampler, "dataset", None)
        if source is None:
            source = getattr(self.sampler, "data_source", None)
        if source is None or not hasattr(source, "get_data_info"):
            raise TypeError(
                "aspect-ratio batches need the image sizes: a dataset with get_data_info(i) "
                f"(an mmengine BaseDataset); got {type(source).__name__} from the sampler "
                f"{type(self.sampler).__name__}. Pass dataset=, or turn grouping off with "
                "train_dataloader.batch_sampler=None")
        return source

    def _flag(self, index: int) -> int:
        # Looked up once per index and kept: get_data_info unpickles a whole annotation entry.
        if self._flags is None:
            self._flags = np.full(len(self._source()), -1, dtype=np.int8)
        flag = int(self._flags[index])
        if flag < 0:
            info = self._source().get_data_info(index)
            if "width" not in info or "height" not in info:
                raise ValueError(
                    f"sample {index} ({info.get('img_path', '?')}) has no width / height in its "
                    "data info, which aspect-ratio grouping reads; give the dataset the image "
                    "sizes or set train_dataloader.batch_sampler=None")
            flag = orientation(info["width"], info["height"])
            self._flags[index] = flag
        return flag

    def __iter__(self) -> Iterator[list[int]]:
        buckets: tuple[list[int], list[int]] = ([], [])
        for index in self.sampler:
            bucket = buckets[self._flag(index)]
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()
        yield from self._leftovers(*buckets)

    def _leftovers(self, a: list[int], b: list[int]) -> Iterator[list[int]]:
        if self.drop_last:
            if len(a) + len(b) >= self.batch_size:
                big, small = (a, b) if len(a) >= len(b) else (b, a)
                yield big + small[: self.batch_size - len(big)]
        elif len(a) + len(b) <= self.batch_size:
            if a or b:
                yield a + b
        else:  # both non-empty (each < batch_size): two batches, as ceil((a + b) / size) says
            yield a
            yield b

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def padding_fraction(sizes: Sequence[tuple[int, int]], batches: Iterable[Sequence[int]],
                     size_divisor: int = 32) -> float:
    """The share of the batch tensors' pixels that is padding: each batch is padded to its
    largest height and width rounded up to ``size_divisor`` (mmdet's ``DetDataPreprocessor``
    with ``pad_size_divisor``); ``sizes[i]`` is image ``i``'s ``(height, width)`` as the model
    sees it (after resizing). Pixels of all batches pooled, so a big batch counts more."""
    padded = total = 0
    for batch in batches:
        hw = np.asarray([sizes[i] for i in batch], dtype=np.int64)
        h, w = (-(-hw.max(axis=0) // size_divisor) * size_divisor).tolist()
        total += len(batch) * h * w
        padded += len(batch) * h * w - int((hw[:, 0] * hw[:, 1]).sum())
    return padded / total if total else 0.0
