"""Fashion-MNIST in the form of ``SyntheticShapes``, with the garment's silhouette as mask.

File layouts and the unpacking cache: :doc:`/design_notes/data_and_study`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import FashionMNIST

from captum_regularized.datasets.rendered import Indices, RenderedItems, as_index_tensor, check_int

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_FILES", "FashionMNISTWithMasks"]

FASHION_MNIST_CLASSES: tuple[str, ...] = tuple(FashionMNIST.classes)

FASHION_MNIST_FILES: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
"""The four IDX files (uncompressed names; the distributed ones end in ``.gz``)."""

DEFAULT_MASK_THRESHOLD = 0.02

MAX_IMAGE_SIZE = 512
_RAW = Path("FashionMNIST", "raw")
_STAMP = "sources.json"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/captum_regularized`` (or ``~/.cache/...``, else a temp folder)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    folder = Path(base) / "captum_regularized"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "captum_regularized-cache"
    return folder


def _check_idx(path: Path, shown: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions in the header of the IDX file ``path``; errors name ``shown``."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        header = file.read(4 + 4 * ndim)
    expected_magic = 0x0800 + ndim
    if len(header) < 4 + 4 * ndim:
        raise ValueError(
            f"{shown} is too short for an IDX file ({size} bytes); it is truncated or "
            "not a Fashion-MNIST file"
        )
    (magic,) = struct.unpack(">I", header[:4])
    if magic != expected_magic:
        raise ValueError(
            f"{shown} has the wrong magic number 0x{magic:08x}; expected "
            f"0x{expected_magic:08x} (an IDX file of unsigned bytes with {ndim} "
            f"dimension{'s' if ndim > 1 else ''}); is it gzipped without the .gz suffix, "
            "or another kind of file?"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    data_bytes, needed = size - len(header), math.prod(dims)
    if data_bytes != needed:
        raise ValueError(
            f"{shown} holds {data_bytes} data bytes but its header {dims} needs {needed}; "
            "the file is truncated or damaged"
        )
    return dims


def _locate(root: Path) -> tuple[bool, dict[str, Path]]:
    """``(is torchvision's layout, {name: file holding it})``; FileNotFoundError naming
    the missing files."""
    names = list(FASHION_MNIST_FILES.values())
    raw = root / _RAW
    if all((raw / name).is_file() for name in names):
        return True, {name: raw / name for name in names}
    found: dict[str, Path] = {}
    for name in names:
        for folder in (root, raw):
            for candidate in (folder / name, folder / f"{name}.gz"):
                if name not in found and candidate.is_file():
                    found[name] = candidate
    missing = [name for name in names if name not in found]
    if missing:
        wanted = ", ".join(f"{name}.gz" for name in missing)
        raise FileNotFoundError(
            f"Fashion-MNIST file(s) {wanted} not found in {root} (nor uncompressed, nor in "
            f"{raw}); put the four IDX files there, or pass download=True to fetch them"
        )
    return False, found


def fashion_mnist_missing(root: Path) -> str:
    """Why Fashion-MNIST cannot be read from ``root`` ("" when its four files are there)."""
    if not root.is_dir():
        return f"Fashion-MNIST not found: {root} is not a folder"
    try:
        _locate(root)
    except FileNotFoundError as error:
        return str(error).split(";")[0]
    return ""


def _place(source: Path, target: Path) -> None:
    """Unpack ``source`` (``.gz``) or link it (plain) to ``target``, atomically."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        if source.suffix == ".gz":
            try:
                with gzip.open(source, "rb") as packed, open(partial, "wb") as unpacked:
                    shutil.copyfileobj(packed, unpacked, 1 << 20)
            except (EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise ValueError(
                    f"{source} is not a readable gzip file ({error}); it is truncated or "
                    "damaged"
                ) from None
        else:
            try:
                os.symlink(source.resolve(), partial)
            except OSError:
                shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        if partial.is_symlink() or partial.exists():
            partial.unlink()


def _convert(root: Path, files: dict[str, Path], cache_dir: Path) -> Path:
    """Torchvision's layout for ``files`` in ``root``'s cache folder; that folder."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    folder = cache_dir / "fashion_mnist" / key
    raw = folder / _RAW
    stamp = folder / _STAMP
    stats = {name: path.stat() for name, path in files.items()}
    fingerprint = {name: [str(path.resolve()), stats[name].st_size, stats[name].st_mtime_ns]
                   for name, path in files.items()}
    try:
        fresh = json.loads(stamp.read_text()) == fingerprint
    except (OSError, ValueError):
        fresh = False
    if fresh and all((raw / name).is_file() for name in files):
        return folder
    raw.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for name, source in files.items():
        _place(source, raw / name)
    for (_, kind), name in FASHION_MNIST_FILES.items():
        _check_idx(raw / name, files[name], 3 if kind == "images" else 1)
    stamp.write_text(json.dumps(fingerprint))
    return folder


class FashionMNISTWithMasks(RenderedItems):
    """Fashion-MNIST items ``(image, label, mask)``, in the form of ``SyntheticShapes``.

    ``image`` is float32 ``(channels, S, S)``: the 8-bit pixels divided by 255, resized
    bilinearly (antialiased) from 28; ``mask`` is bool ``(1, S, S)``, the garment's
    silhouette ``image[:1] > mask_threshold``. The mask marks the object, not proven
    evidence (see :doc:`/design_notes/data_and_study`).

    Parameters
    ----------
    root : str or Path
        Torchvision's layout (``root/FashionMNIST/raw/...``) or a folder holding the four
        IDX files directly, gzipped or not. Never written to, except by ``download``.
    train, download : bool
        The 60 000 training images (else the 10 000 test images); let torchvision
        download missing files into ``root/FashionMNIST/raw``.
    image_size, channels : int
        Side ``S``, 1 to 512 (28 keeps the native bytes); 1, or 3 (grey repeated).
    mask_threshold : float
        Silhouette threshold in ``[0, 1)`` (default 0.02).
    cache_dir : str or Path, optional
        Where directly-placed files are unpacked into torchvision's layout (default
        :func:`default_cache_dir`).

    Attributes
    ----------
    source : torchvision.datasets.FashionMNIST
        The data set underneath (``source.data``: uint8 ``(N, 28, 28)``).
    labels : torch.Tensor
        All labels, int64 ``(N,)``.

    Raises
    ------
    FileNotFoundError
        When ``root`` or some of the four files are missing (the message names them).
    ValueError, TypeError
        When a file is damaged (the message names it); an argument out of range, of a type.

    Examples
    --------
    >>> import gzip, struct, tempfile
    >>> root, cache = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
    >>> def write_idx(name, values):  # tiny stand-ins for the four files, placed in root
    ...     header = struct.pack(f">{values.dim() + 1}I", 0x800 + values.dim(), *values.shape)
    ...     with gzip.open(root / name, "wb") as file:
    ...         _ = file.write(header + values.to(torch.uint8).numpy().tobytes())
    >>> for split in ("train", "t10k"):
    ...     write_idx(f"{split}-images-idx3-ubyte.gz", torch.randint(0, 256, (4, 28, 28)))
    ...     write_idx(f"{split}-labels-idx1-ubyte.gz", torch.tensor([0, 9, 3, 1]))
    >>> data = FashionMNISTWithMasks(root, image_size=32, channels=3, cache_dir=cache)
    >>> image, label, mask = data[1]
    >>> image.shape, mask.dtype, data.classes[label]
    (torch.Size([3, 32, 32]), torch.bool, 'Ankle boot')
    >>> torch.equal(mask, image[:1] > data.mask_threshold)
    True
    >>> data.tensors()[1].tolist()  # also data.render(indices), data.materialize()
    [0, 9, 3, 1]
    """

    def __init__(
        self,
        root: str | Path,
        train: bool = True,
        image_size: int = 28,
        channels: int = 1,
        download: bool = False,
        *,
        mask_threshold: float = DEFAULT_MASK_THRESHOLD,
        cache_dir: str | Path | None = None,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str or Path, got {type(root).__name__}")
        for name, flag in (("train", train), ("download", download)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.image_size = check_int("image_size", image_size, 1, MAX_IMAGE_SIZE)
        self.channels = check_int("channels", channels, 1)
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if isinstance(mask_threshold, bool) or not isinstance(mask_threshold, (int, float)):
            raise TypeError(f"mask_threshold must be a float, got {type(mask_threshold).__name__}")
        if not 0.0 <= mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in [0, 1), got {mask_threshold}")
        self.mask_threshold = float(mask_threshold)
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"cache_dir must be a str or Path, got {type(cache_dir).__name__}")
        self.root = Path(root)
        self.train = train
        self._files: dict[str, Path] = {}
        self.source = self._open(download, cache_dir)
        self.labels: torch.Tensor = self.source.targets
        if self.labels.numel() and int(self.labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise ValueError(
                f"{self._files[self._name('labels')]} holds label {int(self.labels.max())}; "
                f"Fashion-MNIST labels are 0 to {len(FASHION_MNIST_CLASSES) - 1}"
            )

    def _name(self, kind: str) -> str:
        return FASHION_MNIST_FILES[("train" if self.train else "test", kind)]

    def _open(self, download: bool, cache_dir: str | Path | None) -> FashionMNIST:
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"root must be a folder, got the file {self.root}")
        if not self.root.is_dir() and not download:
            raise FileNotFoundError(
                f"root {self.root} does not exist; pass download=True to fetch Fashion-MNIST "
                "there"
            )
        try:
            native, self._files = _locate(self.root) if self.root.is_dir() else (True, {})
        except FileNotFoundError:
            if not download:
                raise
            native, self._files = True, {}
        if native:
            folder = self.root
        else:
            cache = default_cache_dir() if cache_dir is None else Path(cache_dir)
            folder = _convert(self.root, self._files, cache)
        if not self._files:  # fetch into root/FashionMNIST/raw
            FashionMNIST(str(folder), train=self.train, download=True)
            self._files = {name: folder / _RAW / name for name in FASHION_MNIST_FILES.values()}
        raw = folder / _RAW
        images, labels = self._name("images"), self._name("labels")
        shape = _check_idx(raw / images, self._files[images], 3)
        (count,) = _check_idx(raw / labels, self._files[labels], 1)
        if shape[0] != count:
            raise ValueError(
                f"{self._files[images]} holds {shape[0]} images but {self._files[labels]} "
                f"holds {count} labels"
            )
        return FashionMNIST(str(folder), train=self.train, download=False)

    @property
    def classes(self) -> tuple[str, ...]:
        """The ten class names: ``classes[label]`` names the garment."""
        return FASHION_MNIST_CLASSES

    shape_names = classes  # the name SyntheticShapes uses

    @property
    def num_classes(self) -> int:
        """Number of classes (10)."""
        return len(FASHION_MNIST_CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, train={self.train}, "
            f"image_size={self.image_size}, channels={self.channels}, "
            f"mask_threshold={self.mask_threshold})"
        )

    @torch.no_grad()
    def render(
        self, indices: Indices, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(images, labels, masks)`` of the item ``indices``, resized on ``device``."""
        index_tensor = as_index_tensor(indices, len(self))
        images = self.source.data[index_tensor].to(device)[:, None].to(torch.float32) / 255.0
        size = self.image_size
        if images.numel() == 0:
            images = images.new_zeros(len(index_tensor), 1, size, size)
        elif tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear",
                                   align_corners=False, antialias=True).clamp_(0.0, 1.0)
        masks = images > self.mask_threshold
        if self.channels == 3:
            images = images.repeat(1, 3, 1, 1)
        return images, self.labels[index_tensor].to(device), masks
