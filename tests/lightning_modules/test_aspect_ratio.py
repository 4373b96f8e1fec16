"""Aspect-ratio grouped training batches: one orientation per batch, every image once per epoch
on each process's shard, the same number of batches on every process, the sampler the Trainer
really uses for a detection config (one process and DDP), and the padding it saves."""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from aspect_ratio_worker import Recorder, data_module
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler

from benchmarks.aspect_padding import coco_like_sizes, compare_padding, rescaled
from lightning_modules.aspect_ratio import AspectRatioBatches, padding_fraction
from lightning_modules.demo_data import make_coco_demo

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("aspect_ratio_worker.py")


class Sizes:
    """A dataset of image sizes only, read the way mmdet's datasets give them."""

    def __init__(self, hw):
        self.hw = list(hw)

    def __len__(self) -> int:
        return len(self.hw)

    def get_data_info(self, i: int) -> dict:
        return {"height": self.hw[i][0], "width": self.hw[i][1]}


def wide(hw) -> bool:
    return hw[1] >= hw[0]


def epoch_batches(data: Sizes, world: int, batch: int, epoch: int, drop_last: bool = False,
                  seed: int = 0) -> list[list[list[int]]]:
    """Each rank's batches of one epoch, its shard as Lightning's DistributedSampler cuts it."""
    out = []
    for rank in range(world):
        shard = DistributedSampler(data, world, rank, shuffle=True, seed=seed)
        shard.set_epoch(epoch)
        sampler = AspectRatioBatches(shard, batch, drop_last)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # what Lightning sizes the epoch (and schedules) by
        out.append(batches)
    return out


@pytest.mark.parametrize("world,batch,n", [(1, 2, 37), (2, 2, 37), (3, 4, 37), (2, 4, 40),
                                           (4, 3, 10)])
def test_batches_hold_one_orientation_and_each_image_is_seen_once(world, batch, n):
    data = Sizes(coco_like_sizes(n, landscape=0.6, seed=n))
    for epoch in range(3):
        ranks = epoch_batches(data, world, batch, epoch)
        assert len({len(b) for b in ranks}) == 1  # the same number of steps on every rank
        assert len(ranks[0]) == math.ceil(math.ceil(n / world) / batch)
        seen = collections.Counter()
        for batches in ranks:
            for b in batches[:-1]:  # only an epoch's last batch may mix orientations
                assert len({wide(data.hw[i]) for i in b}) == 1
            assert all(0 < len(b) <= batch for b in batches)
            seen.update(i for b in batches for i in b)
        # Every image once; DistributedSampler's padding repeats the first few (n % world).
        assert set(seen) == set(range(n))
        assert sum(seen.values()) == world * -(-n // world)
        if n % world == 0:
            assert set(seen.values()) == {1}


def test_leftovers_make_one_mixed_batch_only_when_they_fit_in_one():
    # 3 landscape then 3 portrait images, batch 4: leftovers 3 + 3 > 4, two batches of one
    # orientation each; 2 + 1 <= 4: one mixed batch.
    data = Sizes([(480, 640)] * 3 + [(640, 480)] * 3)
    assert list(AspectRatioBatches(range(6), 4, dataset=data)) == [[0, 1, 2], [3, 4, 5]]
    assert list(AspectRatioBatches([0, 1, 3], 4, dataset=data)) == [[0, 1, 3]]
    # Batch 2: one of each left, 1 + 1 <= 2, so one mixed batch (landscape first).
    assert list(AspectRatioBatches([3, 0, 4, 1, 5, 2], 2, dataset=data)) == \
        [[3, 4], [0, 1], [2, 5]]
    # drop_last: one full batch from the leftovers when they have one, the larger bucket first.
    assert list(AspectRatioBatches(range(6), 4, drop_last=True, dataset=data)) == [[0, 1, 2, 3]]
    assert list(AspectRatioBatches([0, 3, 4], 4, drop_last=True, dataset=data)) == []


def test_the_batch_count_depends_on_the_shard_length_only():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n, batch = int(rng.integers(0, 30)), int(rng.integers(1, 6))
        data = Sizes([(480, 640) if w else (640, 480) for w in rng.random(n) < rng.random()])
        for drop_last in (False, True):
            order = rng.permutation(n).tolist()
            sampler = AspectRatioBatches(order, batch, drop_last, dataset=data)
            batches = list(sampler)
            assert len(batches) == len(sampler) == len(BatchSampler(order, batch, drop_last))
            flat = [i for b in batches for i in b]
            assert len(flat) == len(set(flat))
            if drop_last:
                assert all(len(b) == batch for b in batches)
            else:
                assert sorted(flat) == sorted(order)


def test_shuffles_differ_per_epoch_and_repeat_for_the_same_epoch():
    data = Sizes(coco_like_sizes(24, landscape=0.5, seed=3))
    assert epoch_batches(data, 2, 2, 0) != epoch_batches(data, 2, 2, 1)
    assert epoch_batches(data, 2, 2, 1) == epoch_batches(data, 2, 2, 1)  # what resuming relies on


def test_sizes_missing_from_the_data_info_are_named():
    class NoSizes(Sizes):
        def get_data_info(self, i):
            return {"img_path": f"{i}.jpg"}

    with pytest.raises(ValueError, match=r"sample 0 \(0\.jpg\) has no width / height.*"
                                         r"batch_sampler=None"):
        list(AspectRatioBatches(range(2), 2, dataset=NoSizes([(1, 1)] * 2)))
    with pytest.raises(TypeError, match="need the image sizes"):
        list(AspectRatioBatches(range(2), 2))  # a range has no sizes


# ---- padding --------------------------------------------------------------------------------

def test_padding_fraction_by_hand():
    sizes = [(480, 640), (640, 480), (427, 640)]
    # A portrait and a landscape 640 x 480: a 640 x 640 batch, a quarter of it padding.
    assert padding_fraction(sizes, [[0, 1]]) == pytest.approx(0.25)
    assert padding_fraction(sizes, [[0], [1]]) == 0.0
    # 427 rows are padded to 448 (a multiple of 32): 21 of 448 rows, with the 480-row image
    # the 427-row one pads to 480.
    assert padding_fraction(sizes, [[2]]) == pytest.approx(21 / 448)
    assert padding_fraction(sizes, [[0, 2]]) == pytest.approx(53 * 640 / (2 * 480 * 640))
    assert rescaled(480, 640) == (800, 1067) and rescaled(640, 427) == (1199, 800)


def test_grouping_saves_most_of_the_padding_on_coco_like_sizes():
    sizes = coco_like_sizes(2000, landscape=0.5, seed=0)
    out = compare_padding(sizes, batch_size=2, world_size=8)
    # Mixed pairs pad to a square; what grouping leaves is 480 vs 427 short sides and the
    # rounding to 32 (about 4 %).
    assert out["plain"] > 0.18 and out["grouped"] < 0.05


# ---- the Trainer, on the demo detection config ---------------------------------------------------

@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aspect")
    make_coco_demo(root, num_train=11, num_val=2, seed=4)
    return root / "coco"


def fit_and_record(root: Path, batch: int, epochs: int, **options) -> Recorder:
    L.seed_everything(0, verbose=False)
    module = Recorder()
    L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              limit_val_batches=0, num_sanity_val_steps=0
              ).fit(module, datamodule=data_module(str(root), batch, **options))
    return module


def test_the_trainer_uses_grouped_batches_for_a_detection_config(coco_root):
    module = fit_and_record(coco_root, batch=3, epochs=2)
    assert module.loader == {"batch_sampler": "AspectRatioBatches", "sampler": "RandomSampler",
                             "len": 4, "num_training_batches": 4,
                             "estimated_stepping_batches": 8}
    ids = json.loads((coco_root / "annotations/instances_train2017.json").read_text())["images"]
    for epoch in (0, 1):
        batches = module.batches[epoch]
        assert len(batches) == 4
        assert sorted(s[0] for b in batches for s in b) == sorted(im["id"] for im in ids)
        for b in batches[:-1]:  # img_shape (h, w) after the pipeline's resize
            assert len({s[2] >= s[1] for s in b}) == 1, b
        assert {s[2] >= s[1] for b in batches for s in b} == {True, False}  # both kinds there
    assert module.batches[0] != module.batches[1]


def test_batch_sampler_none_gives_plain_batches_and_others_are_refused(coco_root):
    module = fit_and_record(coco_root, batch=3, epochs=1,
                            **{"train_dataloader.batch_sampler": None})
    assert module.loader["batch_sampler"] == "BatchSampler"
    assert module.loader["sampler"] == "RandomSampler"
    dm = data_module(str(coco_root), 2, **{"train_dataloader.batch_sampler.type": "MyBatches"})
    with pytest.raises(ValueError, match="'MyBatches' is not supported here"):
        dm.train_dataloader()
    dm = data_module(str(coco_root), 2, **{
        "val_dataloader.batch_sampler": dict(type="AspectRatioBatchSampler")})
    with pytest.raises(ValueError, match="grouping is for training only"):
        dm.val_dataloader()


def test_the_loader_samples_in_order_without_shuffling(coco_root):
    dm = data_module(str(coco_root), 2, **{"train_dataloader.sampler.shuffle": False})
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, AspectRatioBatches)
    assert not isinstance(loader.batch_sampler.sampler, RandomSampler)
    first = [b for b in loader.batch_sampler]
    assert first == list(loader.batch_sampler) and first[0][0] == 0


@pytest.mark.slow  # two processes (imports dominate)
def test_two_processes_group_their_own_shards_with_equal_step_counts(coco_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(WORKER), "2", str(coco_root), "2", "2", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Lightning put its DistributedSampler into the grouping batch sampler: 11 images, 6 per
    # rank (one repeated), 3 batches of 2 on each.
    for r in ranks:
        assert (r["batch_sampler"], r["sampler"], r["len"]) == \
            ("AspectRatioBatches", "DistributedSampler", 3)
        assert [len(r["batches"][e]) for e in ("0", "1")] == [3, 3]
    # The batches are those of the seeded, epoch-dependent shards (so a resumed epoch gets the
    # same ones), grouped: rebuilt here from the dataset's sizes alone.
    info = ranks[0]["dataset"]
    data = Sizes([(h, w) for _, h, w in info])
    for epoch in (0, 1):
        expected = epoch_batches(data, 2, 2, epoch)
        got = [r["batches"][str(epoch)] for r in ranks]
        assert [[[s[0] for s in b] for b in bs] for bs in got] == \
            [[[info[i][0] for i in b] for b in bs] for bs in expected]
        assert {s[0] for bs in got for b in bs for s in b} == {i for i, _, _ in info}
        for bs in got:
            for b in bs[:-1]:
                assert len({s[2] >= s[1] for s in b}) == 1
