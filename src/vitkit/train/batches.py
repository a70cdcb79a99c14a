"""The batches of a run: its training split in memory on the device (or streamed from a shard
folder), cut into the steps of each epoch, and its validation and test splits.

An epoch's order is a function of (seed, epoch) only, never of the global random generator, so
a resumed run, and every process of a distributed one, can rebuild any epoch's batches and
start them at any step.
"""

from __future__ import annotations

from typing import Iterator

import torch

from vitkit.data.dataset import DataSplits, training_subset
from vitkit.data.shards import ShardBatches, ShardedSplits, load_batches, open_shards
from vitkit.data.sources import load_data
from vitkit.data.spec import DataSpec
from vitkit.errors import ConfigError
from vitkit.evaluate.preprocess import resize_images
from vitkit.models.config import ModelConfig
from vitkit.train.distributed import Distributed

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 images (B, C, H, W) and labels (B,)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the n training images for one epoch, a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def read_splits(spec: DataSpec, streaming: bool, train_fraction: float) -> DataSplits | ShardedSplits:
    """The run's splits: a shard folder opened for streaming, or any source read into memory
    (its training split cut to `train_fraction` of it)."""
    if streaming:
        if train_fraction < 1.0:
            raise ConfigError("train_fraction needs data read into memory; to train on part of a shard folder, "
                              "shard that part with `vitkit shard`")
        return open_shards(spec.source, spec.max_image_pixels)
    data = load_data(spec)
    data.train = training_subset(data.train, train_fraction, spec.split_seed)
    return data


class RunBatches:
    """Where a run's images come from, for one process of it."""

    def __init__(self, data: DataSplits | ShardedSplits, streaming: bool, device: torch.device,
                 dist: Distributed, batch_size: int, seed: int, workers: int, shuffle_buffer: int):
        self.data, self.streaming, self.device, self.dist = data, streaming, device, dist
        self.batch_size, self.seed, self.workers, self.shuffle_buffer = batch_size, seed, workers, shuffle_buffer
        # Images trained on per epoch by all processes together. Streamed, each takes the same
        # number, its own part of the stream, and the few left over sit the epoch out.
        world = dist.world_size
        self.train_count = len(data.train) // world * world if streaming else len(data.train)
        self.steps_per_epoch = -(-self.train_count // batch_size)
        self.train_images: torch.Tensor | None = None
        self.train_labels: torch.Tensor | None = None

    def hold_train_images(self, model_cfg: ModelConfig) -> Batch:
        """Put the training split on the device as each epoch reads it (in memory, not streamed):
        uint8 images at the model's input size, and their labels. Resized once, kept as uint8:
        each step then only slices and augments."""
        images = self.data.train.images.to(self.device)
        if tuple(images.shape[1:]) != (model_cfg.in_chans, *model_cfg.image_size):
            images = torch.cat([resize_images(images[i:i + 1024], model_cfg).mul_(255).round_().to(torch.uint8)
                                for i in range(0, images.shape[0], 1024)])
        self.train_images = images
        self.train_labels = self.data.train.labels.to(self.device)
        return self.train_images, self.train_labels

    def global_batch(self, step: int) -> int:
        """Images in the global batch of `step` (the last batch of an epoch may be short)."""
        return min(self.batch_size, self.train_count - step * self.batch_size)

    def epoch_batches(self, epoch: int, start_step: int, model_cfg: ModelConfig) -> Iterator[Batch]:
        """This process's (uint8 images, labels) on the device, one training step each, from
        `start_step` on (a run resumed mid-epoch skips the steps it has done)."""
        if self.streaming:
            yield from self._streamed(epoch, start_step, model_cfg)
            return
        if self.train_images is None:
            self.hold_train_images(model_cfg)
        order = epoch_order(self.seed, epoch, self.train_labels.shape[0]).to(self.device)
        batch = self.batch_size
        for step in range(start_step, self.steps_per_epoch):
            index = self.dist.shard(order[step * batch:(step + 1) * batch])
            yield self.train_images[index], self.train_labels[index]

    def _streamed(self, epoch: int, start_step: int, model_cfg: ModelConfig) -> Iterator[Batch]:
        """Decoded by `workers` DataLoader processes at the model's input size; the shard order
        and shuffle buffer are seeded by (seed, epoch)."""
        # The batch size is the global one, which Distributed.check made a multiple of the world size.
        batches = ShardBatches(self.data.train, batch_size=self.batch_size // self.dist.world_size,
                               image_size=model_cfg.image_size, channels=model_cfg.in_chans, shuffle=True,
                               seed=self.seed, epoch=epoch, buffer_size=self.shuffle_buffer,
                               rank=self.dist.rank, world_size=self.dist.world_size, start_batch=start_step)
        for images, labels in load_batches(batches, self.workers, pin_memory=self.device.type == "cuda"):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def eval_batches(self, split: str, model_cfg: ModelConfig, batch_size: int) -> Iterator[tuple[int, Batch]]:
        """(index of the batch's first image in the split, (uint8 images, labels)) of a whole
        split, in order; streamed splits are decoded batch by batch."""
        if not self.streaming:
            part = self.data.split(split)
            for start in range(0, len(part), batch_size):
                yield start, (part.images[start:start + batch_size], part.labels[start:start + batch_size])
            return
        batches = ShardBatches(self.data.split(split), batch_size=batch_size, image_size=model_cfg.image_size,
                               channels=model_cfg.in_chans)
        start = 0
        for images, labels in load_batches(batches, self.workers, pin_memory=self.device.type == "cuda"):
            yield start, (images, labels)
            start += labels.shape[0]
