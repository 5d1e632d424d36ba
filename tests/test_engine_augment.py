"""Device-side batching matches torchvision's RandomCrop(32, padding=4) + flip + Normalize."""

from __future__ import annotations

import torch
from torchvision import transforms
from torchvision.transforms import functional as TF

from engine.augment import DeviceLoader, random_crop_flip
from engine.datasets import DATASETS

CPU = torch.device("cpu")


def _position_image() -> torch.Tensor:
    """Channel 0 holds row+1, channel 1 column+1, channel 2 is 255: padding reads as 0."""
    rows = torch.arange(1, 33).view(32, 1).expand(32, 32)
    cols = torch.arange(1, 33).view(1, 32).expand(32, 32)
    return torch.stack([rows, cols, torch.full((32, 32), 255)]).to(torch.uint8)


def _torchvision_outcomes(image: torch.Tensor) -> dict[bytes, tuple[int, int, bool]]:
    """Every output torchvision's crop + flip can give, keyed by bytes: (top, left, flipped)."""
    padded = TF.pad(image, [4], fill=0)
    outcomes = {}
    for top in range(9):
        for left in range(9):
            crop = TF.crop(padded, top, left, 32, 32)
            outcomes[crop.numpy().tobytes()] = (top, left, False)
            outcomes[TF.hflip(crop).numpy().tobytes()] = (top, left, True)
    return outcomes


def test_crop_and_flip_follow_torchvision_semantics() -> None:
    image = _position_image()
    outcomes = _torchvision_outcomes(image)
    count = 3000
    generator = torch.Generator().manual_seed(0)
    augmented = random_crop_flip(image.expand(count, 3, 32, 32).contiguous(), generator)
    assert augmented.dtype == torch.uint8 and augmented.shape == (count, 3, 32, 32)
    drawn = [outcomes[item.numpy().tobytes()] for item in augmented]  # KeyError: not torchvision
    tops = torch.bincount(torch.tensor([top for top, _, _ in drawn]), minlength=9)
    lefts = torch.bincount(torch.tensor([left for _, left, _ in drawn]), minlength=9)
    expected = count / 9
    assert tops.numel() == 9 and lefts.numel() == 9  # offsets only in [0, 8]
    assert (tops - expected).abs().max() < 0.25 * expected
    assert (lefts - expected).abs().max() < 0.25 * expected
    flip_rate = sum(flipped for _, _, flipped in drawn) / count
    assert 0.45 < flip_rate < 0.55
    # Padding is zero in every channel before normalization.
    off_image = augmented[:, 2] == 0
    assert torch.all(augmented[:, 0][off_image] == 0) and off_image.any()


def test_normalization_matches_torchvision_per_channel() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=generator)
    loader = DeviceLoader(images, torch.arange(5), dataset="cifar100", batch_size=5, device=CPU)
    ((inputs, _),) = list(loader)
    normalize = transforms.Normalize(DATASETS["cifar100"].mean, DATASETS["cifar100"].std)
    expected = torch.stack(
        [normalize(TF.to_tensor(image.permute(1, 2, 0).numpy())) for image in images]
    )
    assert inputs.dtype == torch.float32
    torch.testing.assert_close(inputs, expected, atol=1e-5, rtol=1e-5)


def test_every_epoch_is_a_fresh_shuffle_and_keeps_the_last_partial_batch() -> None:
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    loader = DeviceLoader(
        images,
        torch.arange(10),
        dataset="cifar10",
        batch_size=4,
        device=CPU,
        generator=torch.Generator().manual_seed(0),
        shuffle=True,
        augment=True,
    )
    assert len(loader) == 3
    epochs = []
    for _ in range(3):
        batches = list(loader)
        assert [labels.numel() for _, labels in batches] == [4, 4, 2]
        order = torch.cat([labels for _, labels in batches])
        assert sorted(order.tolist()) == list(range(10))
        epochs.append(order.tolist())
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_same_generator_seed_gives_the_same_batches() -> None:
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)

    def first_batch(seed: int) -> torch.Tensor:
        loader = DeviceLoader(
            images,
            torch.arange(6),
            dataset="cifar10",
            batch_size=6,
            device=CPU,
            generator=torch.Generator().manual_seed(seed),
            shuffle=True,
            augment=True,
        )
        return next(iter(loader))[0]

    assert torch.equal(first_batch(3), first_batch(3))
    assert not torch.equal(first_batch(3), first_batch(4))
