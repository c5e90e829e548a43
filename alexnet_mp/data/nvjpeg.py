"""The nvJPEG path: whole batches decoded by ``torchvision.io.decode_jpeg`` on the GPU, augmented there.

For machines with a GPU but without DALI. Host threads only read the files' bytes (with
``prefetch`` batches in flight); one decoding thread hands each batch's JPEGs to a single
``decode_jpeg(list, device="cuda")`` call (batched nvJPEG: the GPU's hardware JPEG engines
on A100/H100 for baseline JPEGs, nvJPEG's hybrid decoder for the rest), then applies the
per-sample plan of :mod:`.augment` on the device, with the torchvision loader's geometry:
``resize`` to the planned (H', W') with antialiasing (images of one source size resized
together), the 256 centre square, the planned 224 crop and flip, the normalisation and the
PCA lighting (:func:`.device_source.augment`), or the ten patches (:func:`.device_source.patches`).
On a CUDA device the decoding thread works on its own stream, ``prefetch`` batches ahead of the
training step (the trainer's CUDA graph capture is ``thread_local``, so decoding goes on meanwhile).

Files that are not JPEGs (a PNG or BMP in a class folder) are decoded on the host with PIL
and moved to the device. When a batched decode fails, its JPEGs are decoded one by one (on
the device, then with libjpeg-turbo and PIL on the host) to keep the good ones and name the
bad one: a ``DataError``, like the torchvision loader's. With ``device="cpu"`` the same code runs on
the CPU (libjpeg-turbo; the tests compare it with the torchvision loader bit for bit).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from ..errors import DataError
from .augment import RESIZE, ColorStats, centre_offset, resized_size
from .device_source import augment, patches
from .torchvision_loader import RESCAN, _decode, check_size, undecodable

JPEG_MAGIC = b"\xff\xd8\xff"  # SOI and the first marker's FF: every JPEG decode_jpeg accepts starts so
_END = object()


def read_bytes(path: str) -> torch.Tensor:
    """The file's bytes as a uint8 CPU tensor, or a ``DataError`` naming it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path} cannot be read ({err.strerror or err}); " + RESCAN) from None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() >= 3 and bytes(data[:3].tolist()) == JPEG_MAGIC


class NvjpegBatches:
    """``(images, labels)`` batches of the planned samples, decoded and augmented on ``device``.

    ``offsets`` (N, 2), ``mirror`` (N,) and ``shift`` (N, 3) are each sample's plan, as for
    :class:`.torchvision_loader.PlannedImages`; ``threads`` host threads read bytes
    (``0``: one), ``prefetch`` batches are decoded ahead. Images float32 ``(B, 3, 224, 224)``,
    ``(B, 10, 3, 224, 224)`` with ``ten_crop``; labels int64 ``(B,)``, both on ``device``.
    """

    def __init__(self, *, files, labels, sizes, offsets, mirror, shift, stats: ColorStats, batch_size: int,
                 threads: int, prefetch: int, device, ten_crop: bool):
        self.files, self.labels = list(files), np.asarray(labels, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
        self.resized = resized_size(self.sizes)
        self.top_left = centre_offset(self.resized)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        self.mirror = np.asarray(mirror, dtype=np.int64)
        self.shift = np.asarray(shift, dtype=np.float64).reshape(-1, 3)
        self.stats, self.batch_size, self.ten_crop = stats, int(batch_size), ten_crop
        self.threads, self.prefetch = max(1, int(threads)), max(1, int(prefetch))
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device

    def __len__(self) -> int:
        return -(-len(self.files) // self.batch_size)

    # -- one batch ----------------------------------------------------------------------

    def decode(self, lo: int, hi: int, data: list[torch.Tensor]) -> list[torch.Tensor]:
        """Samples ``lo … hi - 1`` as uint8 (3, H, W) RGB on the device, in order; their bytes ``data``."""
        images: list[torch.Tensor | None] = [None] * len(data)
        jpegs = [k for k, d in enumerate(data) if is_jpeg(d)]
        if jpegs:
            try:
                decoded = decode_jpeg([data[k] for k in jpegs], mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # one bad file fails the whole call: find it, keep the rest
                decoded = [self._decode_one(lo + k, data[k]) for k in jpegs]
            for k, img in zip(jpegs, decoded):
                images[k] = img
        for k, img in enumerate(images):
            if img is None:  # PNG, BMP, …: whatever the scan's PIL decode accepted
                images[k] = self._host_decode(lo + k)
        for k, img in enumerate(images):
            check_size(self.files[lo + k], img, self.sizes[lo + k])
        return images

    def _decode_one(self, i: int, data: torch.Tensor) -> torch.Tensor:
        """Sample ``i`` alone: on the device, then (on a GPU) libjpeg-turbo on the host for what
        nvJPEG declines (e.g. some CMYK or lossless JPEGs), then PIL, whose decode the scan checked
        (decode_jpeg rejects some damage PIL tolerates); the first error names the file otherwise."""
        attempts = [lambda: decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)]
        if self.device.type != "cpu":
            attempts.append(lambda: decode_jpeg(data, mode=ImageReadMode.RGB).to(self.device))
        attempts.append(lambda: _decode(self.files[i], "pil").to(self.device))
        first = None
        for attempt in attempts:
            try:
                return attempt()
            except Exception as err:  # any decoder failure here is this file's
                first = first or err
        raise undecodable(self.files[i], first) from None

    def _host_decode(self, i: int) -> torch.Tensor:
        try:
            img = _decode(self.files[i], "pil")
        except Exception as err:  # any decoder failure here is this file's
            raise undecodable(self.files[i], err) from None
        return img.to(self.device)

    def squares(self, lo: int, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 (B, 3, 256, 256): each image resized to its planned (H', W') (antialiased, as
        ``F.resize`` in the torchvision loader; images of one source size in one call) and its
        centre square cut out."""
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, img in enumerate(images):
            groups.setdefault((*img.shape[-2:], *self.resized[lo + k]), []).append(k)
        for (_, _, rh, rw), ks in groups.items():
            batch = torch.stack([images[k] for k in ks]) if len(ks) > 1 else images[ks[0]][None]
            resized = F.resize(batch, [int(rh), int(rw)], antialias=True)
            top, left = (int(v) for v in self.top_left[lo + ks[0]])
            for j, k in enumerate(ks):
                out[k] = resized[j, :, top:top + RESIZE, left:left + RESIZE]
        return torch.stack(out)

    def planned(self, lo: int, hi: int, squares: torch.Tensor) -> torch.Tensor:
        """The plan's crops of samples ``lo … hi - 1``: float32, normalised, lit."""
        if self.ten_crop:
            return patches(squares, self.shift[lo:hi], self.stats, ten_crop=True)
        return augment(squares, self.offsets[lo:hi], self.mirror[lo:hi], self.shift[lo:hi], self.stats)

    def batch(self, lo: int, hi: int, data: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.decode(lo, hi, data)
        out = self.planned(lo, hi, self.squares(lo, images))
        labels = torch.from_numpy(self.labels[lo:hi].copy()).to(self.device)
        return out, labels

    # -- the pipeline -------------------------------------------------------------------

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        """The decoding thread: reads ahead on the pool, decodes and augments batch after batch."""
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        cuda = self.device.type == "cuda"
        try:
            with contextlib.ExitStack() as ctx:
                stream = None
                if cuda:
                    ctx.enter_context(torch.cuda.device(self.device))
                    stream = torch.cuda.Stream(self.device)
                    ctx.enter_context(torch.cuda.stream(stream))
                pool = ctx.enter_context(ThreadPoolExecutor(self.threads, thread_name_prefix="nvjpeg-read"))
                starts = range(0, len(self.files), self.batch_size)
                reads: deque = deque()
                ahead = iter(starts)

                def submit() -> None:
                    lo = next(ahead, None)
                    if lo is not None:
                        reads.append((lo, [pool.submit(read_bytes, f) for f in self.files[lo:lo + self.batch_size]]))

                for _ in range(self.prefetch + 1):
                    submit()
                while reads and not stop.is_set():
                    lo, futures = reads.popleft()
                    submit()
                    data = [f.result() for f in futures]
                    hi = lo + len(data)
                    images, labels = self.batch(lo, hi, data)
                    event = None
                    if cuda:
                        event = torch.cuda.Event()
                        event.record(stream)
                    if not put((images, labels, event)):
                        for _, futures in reads:
                            for f in futures:
                                f.cancel()
                        return
            put(_END)
        except BaseException as err:  # handed to the consumer, raised there
            put(err)

    def __iter__(self):
        if not self.files:
            return
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(out, stop), name="nvjpeg-decode", daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                images, labels, event = item
                if event is not None:  # the batch was made on the decoding thread's stream
                    current = torch.cuda.current_stream(self.device)
                    current.wait_event(event)
                    images.record_stream(current)
                    labels.record_stream(current)
                yield images, labels
        finally:
            stop.set()
            while worker.is_alive():
                with contextlib.suppress(queue.Empty):
                    out.get_nowait()
                worker.join(timeout=0.05)
