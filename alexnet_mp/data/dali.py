"""DALI pipelines: the paper's training crops and the evaluation centre crop / ten patches.

The reader gets this process's file list explicitly, in epoch order (``random_shuffle``
off), and a named ``fn.external_source`` feeds, batch by batch, each sample's parameters
computed in :mod:`.augment`. We shard the list ourselves (see :mod:`.sharding`) rather
than by the reader's ``shard_id``/``num_shards`` because exact resume must start the reader
mid-epoch (it has no start offset) and because each sample's parameters are tied to its
epoch position; the reader is still named and the iterator still gets ``reader_name``.

Training, fused: ``decoders.image_slice`` decodes only the region around the 224 crop
(the crop plus the filter's reach; libjpeg-turbo skips the rest), ``resize`` resamples
just the crop window (``roi_start``/``roi_end`` in source pixels: the same sampling grid as
resizing the whole image to short side 256 and cropping), and ``crop_mirror_normalize``
flips, normalises, writes NCHW float, and adds the PCA lighting by taking a per-sample
mean ``255·(mean − shift)``, since ``(x/255 + shift − mean)/std = (x − 255(mean − shift))/(255·std)``.
Decoding is ``device="mixed"`` (nvJPEG) on a GPU, ``"cpu"`` otherwise.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError

READER = "Reader"


def _pipeline(*, files, labels, batch_size, threads, prefetch, device_id, ten_crop, std255, seed):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id,
                  prefetch_queue_depth=prefetch, seed=seed)
    def crops(source):
        jpegs, label = fn.readers.file(files=files, labels=labels, random_shuffle=False,
                                       pad_last_batch=True, name=READER)
        params = fn.external_source(source=source, num_outputs=5 if ten_crop else 6, batch=True, batch_info=True)
        anchor, shape, roi_start, roi_end, mean = params[:4] + params[-1:]
        images = fn.decoders.image_slice(
            jpegs, anchor, shape, device="mixed" if gpu else "cpu", output_type=types.RGB,
            normalized_anchor=False, normalized_shape=False, axis_names="HW",
            adjust_orientation=False, jpeg_fancy_upsampling=True)
        side = 256 if ten_crop else 224
        images = fn.resize(images, size=[side, side], roi_start=roi_start, roi_end=roi_end,
                           roi_relative=False, antialias=True, interp_type=types.INTERP_LINEAR)
        if not ten_crop:
            images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                              mean=mean, std=std255, mirror=params[4])
        else:
            from .augment import TEN_PATCHES

            images = fn.stack(*[
                fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", crop=(224, 224),
                                         crop_pos_y=top / 32, crop_pos_x=left / 32, mean=mean, std=std255,
                                         mirror=m)
                for top, left, m in TEN_PATCHES], axis=0)
        return images, label

    return crops


class DaliBatches:
    """Iterates a DALI pipeline over a planned file list, yielding torch ``(images, labels)``."""

    def __init__(self, *, files, labels, params, batch_size, threads, prefetch, device_id, ten_crop, std255):
        self.files, self.batch_size = files, batch_size
        self.num_batches = -(-len(files) // batch_size)
        self.params = params
        self._args = dict(files=files, labels=[int(x) for x in labels], batch_size=batch_size, threads=threads,
                          prefetch=prefetch, device_id=device_id, ten_crop=ten_crop,
                          std255=[float(s) for s in std255], seed=1)

    def _source(self, info):
        # Prefetching runs past the epoch's end, where the reader starts over: follow it.
        lo = (info.iteration % self.num_batches) * self.batch_size
        idx = np.minimum(np.arange(lo, lo + self.batch_size), len(self.files) - 1)  # pad as the reader pads
        return [[np.ascontiguousarray(p[j]) for j in idx] for p in self.params]

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if not self.files:
            return
        pipe = _pipeline(**self._args)(self._source)
        step = 0
        try:
            pipe.build()
            it = DALIGenericIterator(pipe, ["images", "labels"], reader_name=READER,
                                     last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
            for out in it:
                yield out[0]["images"], out[0]["labels"].reshape(-1).long()
                step += 1
        except RuntimeError as err:
            lo, hi = step * self.batch_size, (step + 3) * self.batch_size
            raise _decode_error(self.files[lo:hi], err, ends=(self.params[0] + self.params[1])[lo:hi]) from None
        finally:
            del pipe


def _decode_error(candidates: list[str], err: Exception, ends=None) -> DataError:
    """Names the file DALI could not decode (PIL re-decodes the batch in flight to find it).

    ``ends``: each candidate's decode window end (y, x) from the scanned size; a file now
    smaller than its window was replaced after the scan.
    """
    from PIL import Image

    for k, path in enumerate(candidates):
        try:
            with Image.open(path) as im:
                im.load()
                h, w = im.height, im.width
        except Exception as bad:  # any failure here is the answer we are looking for
            return DataError(f"{path} cannot be decoded ({bad}); remove it, or rescan with [data] "
                             "on_bad_file = \"skip\" after deleting the cached index.")
        if ends is not None and (h < ends[k][0] or w < ends[k][1]):
            return DataError(f"{path} is {w}x{h} pixels, smaller than when the dataset was scanned: it changed "
                             "since; delete the cached file index ([data] cache_dir, default ~/.cache/alexnet-mp) "
                             "so the next run rescans.")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = (lines[lines.index("encountered:") + 1] if "encountered:" in lines[:-1]  # DALI's operator errors
            else (lines or [type(err).__name__])[0])
    return DataError(f"DALI failed while decoding one of {candidates[0]} … ({len(candidates)} files in flight): "
                     f"{said}")


def dali_params(sizes, mirror, offsets, shift, stats, *, ten_crop: bool):
    """Per-sample arrays for the external source, (y, x) order: decode anchor, shape, crop window, [mirror], mean."""
    from .augment import RESIZE, CROP, crop_window, decode_window

    if ten_crop:
        start, end = crop_window(sizes, np.zeros_like(offsets), side=RESIZE)
    else:
        start, end = crop_window(sizes, offsets, side=CROP)
    anchor, shape = decode_window(sizes, start, end)
    mean255 = 255.0 * (np.asarray(stats.mean)[None, :] - shift)
    window = [anchor.astype(np.int32), shape.astype(np.int32),
              (start - anchor).astype(np.float32), (end - anchor).astype(np.float32)]
    return window + ([] if ten_crop else [mirror.astype(np.int32)]) + [mean255.astype(np.float32)]


def gpu_device_id(device) -> int | None:
    """The CUDA device DALI decodes on, or ``None`` for CPU decoding."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
    return None
