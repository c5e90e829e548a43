"""The torchvision path: a ``DataLoader`` applying the same planned crops, flips and lighting.

For comparison with DALI and for machines without it. Geometry is the textbook one —
``Resize`` to the planned (H', W') with antialiasing, the 256 centre square, the planned
224 crop, flip — where DALI resamples only the crop window on the same sampling grid.
The decoders are PIL or ``torchvision.io.decode_jpeg`` (via ``decode_image``, which also
reads the PNGs a folder may hold). Differences from DALI come from the resampling
filters' arithmetic, not from the geometry; the tests bound them (figures in docs/data.md).
A file that no longer decodes, or changed size, after the scan is a ``DataError`` naming it,
raised in the main process even when a worker found it.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as F  # imported before workers fork (cost otherwise: docs/data.md)
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from ..errors import DataError
from .augment import CROP, RESIZE, TEN_PATCHES, centre_offset, resized_size


def _decode(path: str, decoder: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB, EXIF orientation ignored (as in DALI and the scanned sizes)."""
    if decoder == "pil":
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1)
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


RESCAN = ("it changed after the dataset was scanned: remove or replace it and delete the cached file index "
          "([data] cache_dir, default ~/.cache/alexnet-mp) so the next run rescans.")


def undecodable(path: str, err: BaseException, stricter: str = "") -> DataError:
    """The one-paragraph error for a listed file that no longer decodes (shared with the nvJPEG path)."""
    return DataError(f"{path} cannot be decoded ({' '.join(str(err).split()) or type(err).__name__}); "
                     + RESCAN + stricter)


def check_size(path: str, img: torch.Tensor, size) -> None:
    """A ``DataError`` naming ``path`` unless the decoded (C, H, W) ``img`` has the scanned (H, W) ``size``."""
    (h, w), (h0, w0) = img.shape[-2:], (int(v) for v in size)
    if (h, w) != (h0, w0):
        raise DataError(f"{path} is {w}x{h} pixels, {w0}x{h0} when the dataset was scanned; " + RESCAN)


class PlannedImages(Dataset):
    """Item ``i``: the ``i``-th planned sample, cropped, flipped, lit and normalised."""

    def __init__(self, *, files, labels, sizes, offsets, mirror, shift, mean, std, decoder, ten_crop):
        self.files, self.labels, self.decoder, self.ten_crop = files, labels, decoder, ten_crop
        self.sizes = sizes
        self.resized = resized_size(sizes)
        self.top_left = centre_offset(self.resized)
        self.offsets, self.mirror = offsets, mirror
        self.shift = torch.as_tensor(shift, dtype=torch.float32).reshape(-1, 3, 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, i: int) -> torch.Tensor:
        """File ``i`` decoded, or a ``DataError`` naming it: it broke or changed size after the scan."""
        path = self.files[i]
        try:
            img = _decode(path, self.decoder)
        except Exception as err:  # any decoder failure here is this file's
            stricter = (" If it did not change, decode_jpeg rejects what the scan's PIL decode accepted (e.g. a "
                        "damaged marker after the image data): set [data] torchvision_decoder = \"pil\"."
                        if self.decoder == "decode_jpeg" else "")
            raise undecodable(path, err, stricter) from None
        check_size(path, img, self.sizes[i])
        return img

    def __getitem__(self, i: int):
        img = self._image(i)
        img = F.resize(img, [int(v) for v in self.resized[i]], antialias=True)
        top, left = (int(v) for v in self.top_left[i])
        img = img[:, top:top + RESIZE, left:left + RESIZE]
        if self.ten_crop:
            patches = [img[:, t:t + CROP, l:l + CROP] for t, l, _ in TEN_PATCHES]
            patches = [p.flip(-1) if m else p for p, (_, _, m) in zip(patches, TEN_PATCHES)]
            out = torch.stack(patches).float()
        else:
            t, l = (int(v) for v in self.offsets[i])
            out = img[:, t:t + CROP, l:l + CROP]
            out = (out.flip(-1) if self.mirror[i] else out).float()
        out = (out / 255.0 + self.shift[i] - self.mean) / self.std
        return out, int(self.labels[i])


def _quiet_worker(_: int) -> None:
    torch.set_num_threads(1)  # one core per worker; the workers are the parallelism


class TorchvisionBatches:
    """A ``DataLoader`` over :class:`PlannedImages`, in plan order, batches of ``batch_size``."""

    def __init__(self, dataset: PlannedImages, *, batch_size: int, threads: int, prefetch: int, pin_memory: bool):
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                                 num_workers=threads, prefetch_factor=prefetch if threads else None,
                                 pin_memory=pin_memory, worker_init_fn=_quiet_worker if threads else None,
                                 # its own generator: a DataLoader iterator otherwise draws its base seed
                                 # from the global RNG, shifting dropout masks and breaking exact resume
                                 generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for images, labels in self.loader:
                yield images, labels.long()
        except DataError as err:
            raise _unwrapped(err) from None


def _unwrapped(err: DataError) -> DataError:
    """The one paragraph of a worker's ``DataError``, which arrives as "Caught DataError in DataLoader worker …"
    followed by the worker's traceback, whose last line is the original message."""
    last_line = f"\n{DataError.__module__}.{DataError.__qualname__}: "
    text = str(err).strip()
    return DataError(text.rsplit(last_line, 1)[1]) if last_line in text else err
