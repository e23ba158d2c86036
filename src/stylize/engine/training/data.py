"""The stream of training samples: the data folder, the order of the images, their crops.

The stream is a pure function of the seed, the image count and the position in the stream:
epoch `e` visits the images in a permutation seeded by (seed, e), and the sample at position
`p` is cropped with a generator seeded by (seed, p). A checkpoint only has to record the
position to resume the data exactly where it stopped, whatever the number of loader
processes. Under `torchrun` every process takes its own slice of each step's samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from stylize.engine.imageio import find_images, load_image
from stylize.engine.settings import TrainSettings
from stylize.engine.training.distributed import Processes, ignore_interrupts
from stylize.errors import StylizeError

# Separate seed streams, so the order of epoch e and the crop of position e never coincide.
_ORDER_STREAM = 0
_CROP_STREAM = 1


@dataclass(frozen=True)
class TrainingData:
    """The image files of a data folder, found recursively, in a stable order."""

    folder: Path
    images: tuple[Path, ...]

    @property
    def fingerprint(self) -> str:
        """Changes when files are added, removed or renamed (a resume needs the same list)."""
        names = "\n".join(path.relative_to(self.folder).as_posix() for path in self.images)
        return hashlib.sha256(names.encode()).hexdigest()


def scan_training_data(folder: Path) -> TrainingData:
    """The images under `folder`; StylizeError when there are none or none can be read."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StylizeError(f"data folder not found: {folder}")
    images = tuple(find_images(folder, recursive=True))
    if not images:
        raise StylizeError(f"no image files in {folder} or its subfolders")
    # Unreadable files are skipped during training; this only makes sure something is left.
    for path in images:
        try:
            load_image(path)
        except StylizeError:
            continue
        return TrainingData(folder=folder, images=images)
    raise StylizeError(f"none of the {len(images)} image files in {folder} can be read")


def epoch_order(seed: int, epoch: int, image_count: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the images."""
    return np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(image_count)


def data_loader(
    data: TrainingData,
    settings: TrainSettings,
    processes: Processes,
    *,
    first_position: int,
    steps: int,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """This process's batches of `steps` steps from `first_position` on: uint8 pixels
    (N, 3, H, W), channels-last, and the messages of files that could not be read."""
    order = BatchOrder(
        image_count=len(data.images),
        seed=settings.seed,
        batch_size=settings.batch_size,
        processes=processes,
        first_position=first_position,
        steps=steps,
    )
    return DataLoader(
        CropDataset(data.images, settings.image_size, settings.seed),
        batch_sampler=order,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=ignore_interrupts,
    )


class BatchOrder(Sampler[list[tuple[int, int]]]):
    """This process's share of each step's samples, as (image index, stream position), for
    `steps` steps from `first_position` on."""

    def __init__(
        self,
        *,
        image_count: int,
        seed: int,
        batch_size: int,
        processes: Processes,
        first_position: int,
        steps: int,
    ) -> None:
        self.image_count = image_count
        self.seed = seed
        self.batch_size = batch_size
        self.processes = processes
        self.first_position = first_position
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        samples_per_step = self.batch_size * self.processes.world_size
        epoch, order = -1, np.empty(0, dtype=np.int64)
        for step in range(self.steps):
            start = (
                self.first_position
                + step * samples_per_step
                + self.processes.rank * self.batch_size
            )
            batch = []
            for position in range(start, start + self.batch_size):
                position_epoch, offset = divmod(position, self.image_count)
                if position_epoch != epoch:
                    epoch = position_epoch
                    order = epoch_order(self.seed, epoch, self.image_count)
                batch.append((int(order[offset]), position))
            yield batch


class CropDataset(Dataset):
    """Square crops of the full short edge at a random place, resized to `size`, as uint8
    (H, W, 3). An unreadable file is replaced by the next readable one and reported."""

    def __init__(self, images: Sequence[Path], size: int, seed: int) -> None:
        self.images = list(images)
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, sample: tuple[int, int]) -> tuple[Tensor, list[str]]:
        index, position = sample
        unreadable: list[str] = []
        for attempt in range(len(self.images)):
            path = self.images[(index + attempt) % len(self.images)]
            try:
                image = load_image(path).rgb
            except (StylizeError, OSError) as error:
                unreadable.append(str(error))
                continue
            random = np.random.default_rng([self.seed, _CROP_STREAM, position])
            return self._crop(image, random), unreadable
        raise StylizeError("none of the training images can be read any more")

    def _crop(self, image: Image.Image, random: np.random.Generator) -> Tensor:
        width, height = image.size
        side = min(width, height)
        left = int(random.integers(0, width - side + 1))
        top = int(random.integers(0, height - side + 1))
        crop = image.resize(
            (self.size, self.size),
            Image.Resampling.BILINEAR,
            box=(left, top, left + side, top + side),
        )
        return torch.from_numpy(np.array(crop, dtype=np.uint8))


def collate(samples: Sequence[tuple[Tensor, list[str]]]) -> tuple[Tensor, list[str]]:
    """Stacks a batch; (N, H, W, 3) seen as (N, 3, H, W) is a channels-last batch, the
    networks' preferred layout."""
    pixels = torch.stack([pixels for pixels, _ in samples]).permute(0, 3, 1, 2)
    return pixels, [message for _, messages in samples for message in messages]
