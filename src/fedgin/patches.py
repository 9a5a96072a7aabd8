"""Random 3D patches of cached volumes for 3D models, centred on an organ with a given probability."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedgin.cache import Cache, CacheEntry
from fedgin.errors import DataError


class PatchSampler:
    """Draws batches of (Z, H, W) patches; the batch drawn with a given generator state is always the same."""

    def __init__(
        self,
        selected: Sequence[tuple[Cache, CacheEntry]],
        patch_size: tuple[int, int, int],
        foreground_fraction: float = 0.5,
    ) -> None:
        if not selected:
            raise DataError("(no caches)", "no cached cases selected for 3D patches")
        self.cases = list(selected)
        self.patch_size = tuple(int(size) for size in patch_size)
        self.foreground_fraction = foreground_fraction
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def num_cases(self) -> int:
        return len(self.cases)

    def __len__(self) -> int:
        """Slices covered, so that logs read alike for 2D and 3D runs."""
        return sum(entry.n_slices for _, entry in self.cases)

    def _case(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._arrays:
            cache, entry = self.cases[index]
            self._arrays[index] = (cache.load_image(entry), cache.load_label(entry))
        return self._arrays[index]

    def _crop(self, array: np.ndarray, corner: np.ndarray, fill: float) -> np.ndarray:
        """The patch at `corner`, padded with `fill` where it leaves the volume."""
        patch = np.full(self.patch_size, fill, dtype=array.dtype)
        source = tuple(
            slice(max(c, 0), min(c + p, n))
            for c, p, n in zip(corner, self.patch_size, array.shape, strict=True)
        )
        target = tuple(slice(s.start - c, s.stop - c) for s, c in zip(source, corner, strict=True))
        patch[target] = array[source]
        return patch

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images, labels = [], []
        for _ in range(batch_size):
            case = int(torch.randint(self.num_cases, (1,), generator=generator))
            image, label = self._case(case)
            shape = np.array(image.shape)
            if (
                float(torch.rand(1, generator=generator)) < self.foreground_fraction
                and self.cases[case][1].foreground_slices
            ):
                # Centre on a random organ voxel (found on a coarse grid to keep this cheap).
                organ = np.argwhere(label[::2, ::4, ::4] > 0) * np.array([2, 4, 4])
                centre = organ[int(torch.randint(len(organ), (1,), generator=generator))]
            else:
                centre = np.array([int(torch.randint(int(n), (1,), generator=generator)) for n in shape])
            corner = centre - np.array(self.patch_size) // 2
            images.append(self._crop(np.asarray(image), corner, float(image.min())))
            labels.append(self._crop(np.asarray(label), corner, 0))
        return {
            "image": torch.from_numpy(np.stack(images).astype(np.float32))[:, None],
            "label": torch.from_numpy(np.stack(labels).astype(np.int64))[:, None],
        }
