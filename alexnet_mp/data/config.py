"""``DataConfig``: where the images are and how they are loaded, filled from TOML ``[data]``."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import ConfigError

LOADERS = ("dali", "torchvision")
DECODE_DEVICES = ("auto", "cpu", "gpu")
TORCHVISION_DECODERS = ("pil", "decode_jpeg")
ON_BAD_FILE = ("skip", "fail")
COLOR_STATS = ("imagenet", "dataset")
COLUMN_FEEDS = ("exchange", "duplicate")
STATS_FILE_NAME = "color_stats.json"


def _choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(
            f"[data] {name} = {value!r} is not accepted; use one of: "
            + ", ".join(repr(a) for a in accepted)
            + "."
        )


@dataclass(kw_only=True, slots=True)
class DataConfig:
    """The ``[data]`` section: dataset root, loader, decoding, bad files, colour statistics."""

    path: str = "data/synthetic"
    """Dataset root holding ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``."""
    loader: str = "dali"
    """``"dali"`` (NVIDIA DALI) or ``"torchvision"`` (a ``DataLoader``, for comparison)."""
    decode_device: str = "auto"
    """DALI decoding: ``"auto"`` (GPU ``mixed`` when CUDA is present, else CPU), ``"cpu"``, ``"gpu"``."""
    torchvision_decoder: str = "pil"
    """The torchvision path's decoder: ``"pil"`` or ``"decode_jpeg"`` (``torchvision.io``)."""
    threads: int = 2
    """DALI ``num_threads`` / ``DataLoader`` ``num_workers`` per process (0: no workers; DALI uses 1)."""
    prefetch: int = 2
    """Batches decoded ahead (DALI ``prefetch_queue_depth``, ``DataLoader`` ``prefetch_factor``)."""
    on_bad_file: str = "skip"
    """An undecodable file: ``"skip"`` it (the count is logged) or ``"fail"`` naming it."""
    color_stats: str = "imagenet"
    """``"imagenet"`` (published mean/std and fb.resnet.torch PCA) or ``"dataset"`` (``stats_file``)."""
    stats_file: str = ""
    """JSON written by ``alexnet-mp dataset-stats``; empty means ``<path>/color_stats.json``."""
    mean: list[float] | None = None
    """RGB mean for pixels in [0, 1]; overrides ``color_stats`` when given."""
    std: list[float] | None = None
    """RGB standard deviation for pixels in [0, 1]; overrides ``color_stats`` when given."""
    pca_std: float = 0.1
    """Standard deviation of the paper's PCA lighting alphas; 0 turns the lighting off."""
    column_feed: str = "exchange"
    """Both columns' identical batch: ``"exchange"`` (each decodes half, all-gather) or ``"duplicate"``."""
    cache_dir: str = ""
    """Where the validated file index is cached; empty means ``~/.cache/alexnet-mp``."""
    generate_if_missing: bool = False
    """Training only: write the generated dataset (``alexnet-mp make-dataset``) at ``path`` if it has no train/."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError("[data] path must be a non-empty folder name (the dataset root).")
        _choice("loader", self.loader, LOADERS)
        _choice("decode_device", self.decode_device, DECODE_DEVICES)
        _choice("torchvision_decoder", self.torchvision_decoder, TORCHVISION_DECODERS)
        _choice("on_bad_file", self.on_bad_file, ON_BAD_FILE)
        _choice("color_stats", self.color_stats, COLOR_STATS)
        _choice("column_feed", self.column_feed, COLUMN_FEEDS)
        for name, least in (("threads", 0), ("prefetch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"[data] {name} = {value!r}: use a whole number >= {least}.")
        if isinstance(self.pca_std, bool) or not isinstance(self.pca_std, (int, float)) or self.pca_std < 0:
            raise ConfigError(f"[data] pca_std = {self.pca_std!r}: use a number >= 0 (the paper: 0.1).")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            if (
                not isinstance(value, (list, tuple))
                or len(value) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            ):
                raise ConfigError(f"[data] {name} = {value!r}: use three numbers (R, G, B) for pixels in [0, 1].")
            if name == "std" and min(value) <= 0:
                raise ConfigError(f"[data] std = {value!r}: every value must be > 0.")
            setattr(self, name, [float(v) for v in value])

    @classmethod
    def from_dict(cls, table: dict) -> "DataConfig":
        """Builds the config from a TOML ``[data]`` table, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(
                f"[data] has unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}."
            )
        return cls(**table)
