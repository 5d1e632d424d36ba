"""Batches made on the training device: reshuffle, random crop + flip, normalize.

The whole split stays on the device as uint8 (a quarter of the float size) and every batch is
cut, augmented and normalized with a handful of batched tensor ops, so the loop never waits on
a host-side DataLoader and never syncs with the host.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from engine.datasets import dataset_info

CROP_SIZE = 32
CROP_PADDING = 4


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING
) -> torch.Tensor:
    """Same semantics as torchvision RandomCrop(32, padding, fill=0) + RandomHorizontalFlip().

    Each image gets offsets uniform in [0, 2*padding] into its zero-padded copy and is mirrored
    with probability 0.5; all of it as one gather, in the input's dtype.
    """
    batch, _, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), device=device, generator=generator)
    flip = torch.rand(batch, device=device, generator=generator) < 0.5
    steps_y = torch.arange(height, device=device)
    steps_x = torch.arange(width, device=device)
    rows = top[:, None] + steps_y  # (B, H)
    # A flipped crop reads its columns right to left.
    cols = left[:, None] + torch.where(flip[:, None], width - 1 - steps_x, steps_x)  # (B, W)
    batch_index = torch.arange(batch, device=device)[:, None, None, None]
    channel_index = torch.arange(images.shape[1], device=device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


class Normalize:
    """uint8 images -> float, standardized per channel with the dataset's statistics."""

    def __init__(self, dataset: str, device: torch.device, dtype: torch.dtype) -> None:
        self.dtype = dtype
        mean = torch.tensor(dataset_info(dataset).mean, device=device) * 255
        std = torch.tensor(dataset_info(dataset).std, device=device) * 255
        self.mean = mean.view(1, 3, 1, 1).to(dtype)
        self.std = std.view(1, 3, 1, 1).to(dtype)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.dtype) - self.mean) / self.std


class DeviceLoader:
    """Iterates ``(inputs, labels)`` batches over a uint8 split kept on ``device``.

    With ``shuffle`` every epoch draws a fresh permutation from ``generator``, which also drives
    the augmentation, so saving its state saves where the data order is. The last partial
    batch is kept.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        dataset: str,
        batch_size: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        shuffle: bool = False,
        augment: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if (shuffle or augment) and generator is None:
            raise ValueError("shuffle and augment need a generator")
        self.device = torch.device(device)
        self.images = _to_device(images, self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.generator = generator
        self.shuffle = shuffle
        self.augment = augment
        self.channels_last = channels_last
        self.normalize = Normalize(dataset, self.device, dtype)

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order: torch.Tensor | None = None
        if self.shuffle:
            assert self.generator is not None
            order = torch.randperm(self.num_images, device=self.device, generator=self.generator)
        for start in range(0, self.num_images, self.batch_size):
            if order is None:
                images = self.images[start : start + self.batch_size]
                labels = self.labels[start : start + self.batch_size]
            else:
                indices = order[start : start + self.batch_size]
                images = self.images[indices.to(self.images.device)]
                labels = self.labels[indices]
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.augment:
                assert self.generator is not None
                images = random_crop_flip(images, self.generator)
            inputs = self.normalize(images)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield inputs, labels


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The split on ``device`` when it fits comfortably, else pinned host memory."""
    if device.type != "cuda":
        return images.to(device)
    free_bytes, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() < free_bytes // 4:
        return images.to(device)
    return images.pin_memory()
