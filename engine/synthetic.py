"""Small generated datasets in the exact official CIFAR pickle format, for tests and demos.

Each class gets its own colour and stripe pattern plus per-image noise, so a network can learn
it; the signal is spread over the whole image and survives random crops and horizontal flips.
"""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.datasets import dataset_info

CIFAR100_FINE_LABEL_NAMES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip
CIFAR100_COARSE_LABEL_NAMES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]  # fmt: skip
CIFAR10_LABEL_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

NOISE_STD = 24.0


def _class_images(
    rng: np.random.Generator, label: int, count: int, palette: np.ndarray
) -> np.ndarray:
    """``count`` images (count, 3, 32, 32) uint8 carrying class ``label``'s signal."""
    rows = np.arange(32, dtype=np.float32)[None, :, None]
    frequency = 1 + label % 4  # stripes along rows: invariant to horizontal flips
    phase = rng.uniform(0, 2 * np.pi, size=(count, 1, 1))
    stripes = 40.0 * np.sin(2 * np.pi * frequency * rows / 32 + phase)  # (count, 32, 1)
    colour = palette[label][None, :, None, None]  # (1, 3, 1, 1)
    noise = rng.normal(0.0, NOISE_STD, size=(count, 3, 32, 32))
    images = colour + stripes[:, None, :, :] + noise
    clipped: np.ndarray = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return clipped


def _make_split(
    rng: np.random.Generator, labels_used: int, per_class: int, palette: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    labels = np.repeat(np.arange(labels_used), per_class)
    rng.shuffle(labels)
    images = np.empty((labels.size, 3, 32, 32), dtype=np.uint8)
    for label in range(labels_used):
        where = np.flatnonzero(labels == label)
        images[where] = _class_images(rng, label, where.size, palette)
    return images.reshape(labels.size, 3072), [int(label) for label in labels]


def _dump(path: Path, payload: dict[str, Any]) -> None:
    with path.open("wb") as file:
        pickle.dump(payload, file, protocol=2)


def generate_cifar(
    out_dir: Path,
    dataset: str = "cifar100",
    *,
    classes: int | None = None,
    train_per_class: int,
    test_per_class: int,
    seed: int = 0,
) -> Path:
    """Write a generated dataset into ``out_dir/<official folder>`` and return that folder.

    ``classes`` limits which labels are used (the first ``classes`` of them); the meta file
    still lists every class name, as the official one does.
    """
    layout = dataset_info(dataset)
    total_classes = layout.num_classes
    labels_used = total_classes if classes is None else classes
    if not 1 <= labels_used <= total_classes:
        raise ValueError(f"classes must be between 1 and {total_classes}, got {classes}")
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError("train_per_class and test_per_class must be positive")
    rng = np.random.default_rng(seed)
    palette = rng.uniform(40, 215, size=(total_classes, 3)).astype(np.float32)
    folder = Path(out_dir) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    train_data, train_labels = _make_split(rng, labels_used, train_per_class, palette)
    test_data, test_labels = _make_split(rng, labels_used, test_per_class, palette)

    if dataset == "cifar100":
        for name, data, fine in (
            ("train", train_data, train_labels),
            ("test", test_data, test_labels),
        ):
            # Coarse labels are placeholders: the generated classes have no superclass.
            _dump(
                folder / name,
                {
                    "filenames": [f"generated_{index:06d}.png" for index in range(len(fine))],
                    "batch_label": f"{name}ing batch 1 of 1",
                    "fine_labels": fine,
                    "coarse_labels": [label % 20 for label in fine],
                    "data": data,
                },
            )
        _dump(
            folder / "meta",
            {
                "fine_label_names": list(CIFAR100_FINE_LABEL_NAMES),
                "coarse_label_names": list(CIFAR100_COARSE_LABEL_NAMES),
            },
        )
        return folder

    batches = np.array_split(np.arange(len(train_labels)), len(layout.train_files))
    for number, (name, indices) in enumerate(zip(layout.train_files, batches, strict=True), 1):
        _dump(
            folder / name,
            {
                "batch_label": f"training batch {number} of {len(batches)}",
                "labels": [train_labels[index] for index in indices],
                "data": train_data[indices],
                "filenames": [f"generated_{index:06d}.png" for index in indices],
            },
        )
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels,
            "data": test_data,
            "filenames": [f"generated_{index:06d}.png" for index in range(len(test_labels))],
        },
    )
    _dump(
        folder / "batches.meta",
        {
            "num_cases_per_batch": int(max(len(indices) for indices in batches)),
            "label_names": list(CIFAR10_LABEL_NAMES),
            "num_vis": 3072,
        },
    )
    return folder


def make_archive(src_root: Path, archive_path: Path) -> str:
    """Pack every ``cifar-*`` folder under ``src_root`` into a tar.gz laid out like the
    official archive (the folder at the top level); return the archive's MD5."""
    src_root = Path(src_root)
    folders = sorted(path for path in src_root.iterdir() if path.is_dir())
    if not folders:
        raise ValueError(f"no dataset folder under {src_root}")
    archive_path = Path(archive_path)
    archive_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path, "w:gz") as archive:
        for folder in folders:
            archive.add(folder, arcname=folder.name)
    with archive_path.open("rb") as archive:
        return hashlib.file_digest(archive, "md5").hexdigest()
