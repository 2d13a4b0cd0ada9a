"""The data sets of the book, read strictly and with their provenance.

``load(name, split)`` returns a :class:`Dataset` whose ``describe()`` says
where the numbers came from. Nothing is substituted: a data set that is not
on disk raises :class:`DataNotFoundError` with where it looked and how to get
it, and a file that is damaged or not the published release raises
:class:`CorruptDataError`. Choosing a stand-in is the notebook's decision.

Two sets are built in and need no file: ``digits`` (scikit-learn's bundled
8x8 handwritten digits) and ``circles`` (two noisy concentric circles in 2-D).
``fashion-mnist``, ``mnist`` and ``cifar10`` are read from their standard
release files. ``fashion-mnist-32rgb`` and ``mnist-32rgb`` are those grey sets
in CIFAR-10's 3x32x32 layout (:func:`as_rgb32`), for a notebook that runs a
CIFAR-10 architecture on a stand-in.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import math
import os
import pickle
import tarfile
import zlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import checks

NAMES = ("digits", "fashion-mnist", "mnist", "cifar10", "circles")
# Derived sets: name -> the grey 28x28 set as_rgb32 is applied to.
RGB32 = {"fashion-mnist-32rgb": "fashion-mnist", "mnist-32rgb": "mnist"}
SPLITS = ("train", "test")

# Where Debian's dataset-* packages put their files (dataset-fashion-mnist does).
SYSTEM_DATA_DIR = Path("/usr/share/datasets")

# Every option each set accepts, with its default; the defaults are recorded in
# describe() so a result names exactly what it was computed on.
_OPTIONS: dict[str, dict[str, object]] = {
    "digits": {"size": None},
    "circles": {"n_samples": 1000, "noise": 0.08, "factor": 0.5, "seed": 0},
    "mnist": {"verify": True},
    "fashion-mnist": {"verify": True},
    "cifar10": {},
}

_CLASSES = {
    "digits": tuple(str(d) for d in range(10)),
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"),
    "circles": ("outer (B)", "inner (R)"),  # make_circles labels the outer circle 0
}

# MD5 of each standard IDX file: (the published .gz, its decompressed content).
# The .gz digests are torchvision's (pytorch/vision, torchvision/datasets/mnist.py,
# MNIST.resources and FashionMNIST.resources), the same as in Fashion-MNIST's
# README. A gzip re-compressed with the same content has other bytes -- Debian's
# dataset-fashion-mnist ships such files -- so the digest of the content is
# accepted too; those are the values other projects list for the unpacked files,
# and for Fashion-MNIST they match the content of Debian's files.
_IDX_MD5: dict[str, dict[str, tuple[str, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        "train-labels-idx1-ubyte": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        "t10k-images-idx3-ubyte": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        "t10k-labels-idx1-ubyte": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels-idx1-ubyte": ("25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
        "t10k-images-idx3-ubyte": ("bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
        "t10k-labels-idx1-ubyte": ("bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965"),
    },
}

# CIFAR-10, python version: torchvision's CIFAR10.tgz_md5 and its per-batch
# train_list / test_list (pytorch/vision, torchvision/datasets/cifar.py).
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class DataNotFoundError(FileNotFoundError):
    """The data set is on none of the places looked at; the message lists them
    and says how to get it."""


class CorruptDataError(ValueError):
    """A data file is truncated, malformed, or not the published release."""


@dataclass(frozen=True)
class Dataset:
    """One split of a data set.

    ``x`` is float32 in [0, 1]: images ``[N, C, H, W]``, or points ``[N, 2]``
    for ``circles``. ``y`` is int64 ``[N]`` indexing ``classes``.
    """

    x: Tensor
    y: Tensor
    name: str
    split: str
    classes: tuple[str, ...]
    source: str
    options: dict = field(default_factory=dict)
    derived_from: dict | None = None  # describe() of the set this one was made from
    index: Tensor | None = None  # positions in the set it was made from (first_correct)

    def __len__(self) -> int:
        return self.x.shape[0]

    def describe(self) -> dict:
        """JSON-able provenance, for a notebook to print and store with its results."""
        desc = {
            "name": self.name,
            "split": self.split,
            "n": int(self.x.shape[0]),
            "shape": list(self.x.shape[1:]),
            "source": self.source,
            "options": dict(self.options),
        }
        if self.derived_from is not None:
            desc["derived_from"] = dict(self.derived_from)
        return desc


# ---------------------------------------------------------------- entry points


def load(
    name: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    **options,
) -> Dataset:
    """Load one split of a data set.

    Args:
        name: one of ``NAMES``, or of ``RGB32`` (a grey set made 3x32x32 by :func:`as_rgb32`).
        split: ``"train"`` or ``"test"``.
        root: the directory holding the files (``fashion-mnist``, ``mnist``,
            ``cifar10``); default ``$ADVLIB_DATA/<name>/``, else
            ``./data/<name>/``. ``/usr/share/datasets/<name>/`` is looked at
            next, then torchvision, if installed, downloads into the first.
        limit: keep the first ``limit`` samples of the split (deterministic).
        options: per data set, with defaults --
            ``digits``: ``size=None`` (8x8) or ``28`` (MNIST layout);
            ``circles``: ``n_samples=1000, noise=0.08, factor=0.5, seed=0``;
            ``mnist``, ``fashion-mnist``: ``verify=True`` (check the published
            MD5; ``False`` only for files knowingly not the release);
            ``cifar10``: none (its MD5 is always checked before unpickling).

    Example::

        test = load("digits", "test", size=28)  # x: [450, 1, 28, 28], no download
        print(test.describe())
    """
    if name in RGB32:
        return as_rgb32(load(RGB32[name], split, root=root, limit=limit, **options))
    checks.choice(name, "name", (*NAMES, *RGB32))
    _check_split(split)
    limit = checks.integer(limit, "limit", low=1, none=True)
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in _OPTIONS[name].items()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {name!r}; it takes: {allowed}")
    opts = {**_OPTIONS[name], **options}

    if name == "digits":
        x, y, source = _load_digits(split, opts["size"])
    elif name == "circles":
        x, y, source = _load_circles(split, **opts)
    elif name == "cifar10":
        x, y, source = _load_cifar10(split, root)
    else:
        x, y, source = _load_idx_set(name, split, root, opts["verify"])

    x, y = x[:limit], y[:limit]
    if x.dtype == np.uint8:
        x = x.astype(np.float32)
        x /= 255
    return Dataset(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        name=name,
        split=split,
        classes=_CLASSES[name],
        source=source,
        options={**opts, "limit": limit},
    )


def as_rgb32(dataset: Dataset) -> Dataset:
    """A grey 28x28 set in CIFAR-10's layout, 3x32x32: each image zero-padded
    by 2 pixels on every side (as LeNet-5 read MNIST at 32x32) and its grey
    channel copied to R, G and B. Pixel values, labels and classes are
    unchanged; the result is named ``<name>-32rgb`` and its ``describe()``
    keeps the original's under ``derived_from``.

    Example::

        cifar_like = as_rgb32(load("fashion-mnist", "test"))  # x: [10000, 3, 32, 32]
    """
    if tuple(dataset.x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"as_rgb32 takes grey 28x28 images [N, 1, 28, 28], got {list(dataset.x.shape)} ({dataset.name})")
    return Dataset(
        x=F.pad(dataset.x, (2, 2, 2, 2)).expand(-1, 3, -1, -1).contiguous(),
        y=dataset.y,
        name=f"{dataset.name}-32rgb",
        split=dataset.split,
        classes=dataset.classes,
        source=f"{dataset.source}; zero-padded to 32x32, grey copied to 3 channels",
        options=dict(dataset.options),
        derived_from=dataset.describe(),
    )


def first_correct(model, dataset: Dataset, n: int | None, *, batch_size: int = 1000) -> Dataset:
    """The first ``n`` samples of ``dataset`` that ``model`` classifies
    correctly (all of them for ``n=None`` or ``0``), in the order of the set:
    the papers' "correctly classified test images". The result remembers their
    positions (``index``) and, in ``describe()``, the set they came from and
    how many of it were correct.

    Raises ValueError if fewer than ``n`` are correct: a table computed on
    fewer images than asked for would say so nowhere.

    Example::

        x = first_correct(model, load("digits", "test"), 40).x
    """
    from .train import predict  # train imports data: imported here

    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be an advlib.data.Dataset, got {type(dataset).__name__}")
    n = checks.integer(n, "n", low=0, none=True) or None
    correct = predict(model, dataset.x, batch_size) == dataset.y
    idx = correct.nonzero().squeeze(1)
    if n is not None:
        if len(idx) < n:
            raise ValueError(
                f"asked for the first {n} correctly classified samples of {dataset.name} ({dataset.split}), "
                f"but the model classifies only {len(idx)} of {len(dataset)} correctly"
            )
        idx = idx[:n]
    return Dataset(
        x=dataset.x[idx],
        y=dataset.y[idx],
        name=dataset.name,
        split=dataset.split,
        classes=dataset.classes,
        source=dataset.source,
        options={**dataset.options, "first_correct": n, "correct_of_set": int(correct.sum())},
        derived_from=dataset.describe(),
        index=idx,
    )


def data_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The directories ``load`` looks in for ``name``, in order.

    ``root`` if given, else ``$ADVLIB_DATA/<name>``, else ``./data/<name>``;
    then ``/usr/share/datasets/<name>``. Empty for the built-in sets.
    """
    checks.choice(name, "name", NAMES)
    if name in ("digits", "circles"):
        return []
    if root is not None:
        first = Path(root)
    else:
        first = Path(os.environ.get("ADVLIB_DATA") or "data") / name
    dirs = [first.absolute(), SYSTEM_DATA_DIR / name]
    return list(dict.fromkeys(dirs))


# ------------------------------------------------------------- built-in sets


def _load_digits(split: str, size: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """scikit-learn's 1797 8x8 digits, values 0..16 scaled to [0, 1].

    Split: stratified, 25% test, ``random_state=0`` (1347 train, 450 test).
    ``size=28`` gives MNIST's layout, where a digit fills a 20x20 box centred
    in 28x28: bilinear upscaling of the 8x8 image to 20x20, 4 zero pixels on
    each side. Bilinear weights are convex, so values stay in [0, 1].
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    checks.choice(size, "size", (None, 8, 28))  # None is 8x8
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8]
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=0.25, stratify=bunch.target, random_state=0)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    if size == 28:
        up = F.interpolate(torch.from_numpy(x), size=(20, 20), mode="bilinear", align_corners=False)
        x = F.pad(up, (4, 4, 4, 4)).numpy()
    return x, y, "scikit-learn bundled load_digits (UCI optdigits, 8x8)"


def _load_circles(
    split: str, n_samples: int, noise: float, factor: float, seed: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """``make_circles`` mapped into [0, 1]^2; split stratified, 25% test, same seed.

    The map is one translation and one scale for both axes, so the circles stay
    circles: the L2 distances that DeepFool minimises keep their geometry.
    """
    from sklearn.datasets import make_circles
    from sklearn.model_selection import train_test_split

    n_samples = checks.integer(n_samples, "n_samples", low=8)  # enough for a stratified 25% test split
    noise = checks.number(noise, "noise", low=0)
    factor = checks.number(factor, "factor", low=0, high=1, low_open=True, high_open=True)
    seed = checks.integer(seed, "seed", low=0)
    pts, labels = make_circles(n_samples=n_samples, noise=noise, factor=factor, random_state=seed)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pts = (pts - (lo + hi) / 2) / (hi - lo).max() + 0.5
    x_tr, x_te, y_tr, y_te = train_test_split(pts, labels, test_size=0.25, stratify=labels, random_state=seed)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    return x.astype(np.float32), y, "scikit-learn make_circles, rescaled isotropically into [0, 1]^2"


# ----------------------------------------------------------------------- IDX


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


_INT64_MAX = 2**63 - 1
_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike, *, ndim: int, md5: Collection[str] = ()) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzipped if its name ends in .gz).

    Checked strictly: magic ``00 00 08 <ndim>``, the exact byte length the
    dimensions imply, and, if ``md5`` is non-empty, that the MD5 of the file
    as stored or of its decompressed content is one of ``md5``. Any failure
    raises :class:`CorruptDataError` naming the file.

    The header's dimensions are multiplied as Python integers (no silent
    wrap-around) and checked against what the file really holds before
    anything of that size is allocated: a gzip is decompressed in chunks and
    only up to the length the header announces, plus one byte to notice
    trailing data, so a lying header cannot make the reader allocate it.
    """
    if isinstance(md5, str):  # one digest, not a collection of its characters
        md5 = (md5,)
    ndim = checks.integer(ndim, "ndim", low=1, high=255)
    path = Path(path)
    stored = path.read_bytes()
    gz = path.suffix == ".gz"
    stream = gzip.GzipFile(fileobj=io.BytesIO(stored)) if gz else io.BytesIO(stored)
    header = 4 + 4 * ndim
    try:
        head = stream.read(header)
        if len(head) < header:
            raise CorruptDataError(f"{path}: {len(head)} bytes, shorter than the {header}-byte IDX header")
        if head[:4] != bytes([0, 0, 0x08, ndim]):
            raise CorruptDataError(
                f"{path}: magic number 0x{head[:4].hex()}, expected 0x{bytes([0, 0, 8, ndim]).hex()} "
                f"(unsigned bytes, {ndim} dimension{'s' * (ndim > 1)})"
            )
        dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        count = math.prod(dims)  # a Python int: exact, however large
        if header + count > _INT64_MAX:  # unsigned fields: the count is never negative
            raise CorruptDataError(f"{path}: dimensions {dims} need {header + count} bytes, beyond a 64-bit size")
        if not gz and header + count != len(stored):
            # the real size is known without reading anything more
            problem = "truncated" if len(stored) < header + count else "has trailing bytes"
            raise CorruptDataError(
                f"{path}: {problem}: dimensions {dims} need {header + count} bytes, found {len(stored)}"
            )
        chunks, have = [], 0
        while have <= count:  # read at most count + 1 bytes: the +1 reveals trailing data
            chunk = stream.read(min(_CHUNK, count + 1 - have))
            if not chunk:
                break
            chunks.append(chunk)
            have += len(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptDataError(f"{path}: not a complete gzip file ({err})") from err
    body = b"".join(chunks)
    content_md5 = hashlib.md5(head)
    content_md5.update(body)
    if md5 and _md5(stored) not in md5 and content_md5.hexdigest() not in md5:
        raise CorruptDataError(
            f"{path}: MD5 {_md5(stored)} (content {content_md5.hexdigest()}) is not the published "
            f"{' or '.join(sorted(md5))}; the file is damaged or not the standard release. "
            "Fetch it again, or pass verify=False for files that are knowingly different."
        )
    if len(body) != count:
        found = header + len(body)
        problem = "truncated" if len(body) < count else "has trailing bytes"
        raise CorruptDataError(f"{path}: {problem}: dimensions {dims} need {header + count} bytes, found {found}"
                               + (" or more" if len(body) > count else ""))
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _idx_stems(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_idx_set(name: str, split: str, root, verify: bool) -> tuple[np.ndarray, np.ndarray, str]:
    checks.flag(verify, "verify")
    stems = _idx_stems(split)

    def locate() -> tuple[Path, Path] | None:
        for folder in data_dirs(name, root):
            found = [_find_idx(folder, stem) for stem in stems]
            if all(found):
                return found[0], found[1]
        return None

    files = locate()
    if files is None:
        _download_or_raise(name, split, root, needs=", ".join(f"{s}[.gz]" for s in stems))
        files = locate()
        if files is None:
            raise DataNotFoundError(f"torchvision downloaded {name}, but {', '.join(stems)} are still missing")
    image_path, label_path = files
    digests = _IDX_MD5[name]
    images = read_idx(image_path, ndim=3, md5=digests[stems[0]] if verify else ())
    labels = read_idx(label_path, ndim=1, md5=digests[stems[1]] if verify else ())
    if images.shape[1:] != (28, 28):
        raise CorruptDataError(f"{image_path}: images are {images.shape[1]}x{images.shape[2]}, {name} has 28x28")
    if len(images) != len(labels):
        raise CorruptDataError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise CorruptDataError(f"{label_path}: label {labels.max()} outside 0..9")
    return images[:, None], labels, f"{image_path} + {label_path.name}"


# ------------------------------------------------------------------- CIFAR-10

# The batches are Python 2 pickles of a dict holding a uint8 ndarray and lists
# of ints and strings. Only the callables needed to rebuild that are resolved;
# anything else (os.system, eval, ...) is refused rather than imported.
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array rebuilder, without naming its private module
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # name in NumPy 1 pickles (the release)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # name in NumPy 2 pickles
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes at protocol 2
    **{(mod, kind.__name__): kind for mod in ("builtins", "__builtin__") for kind in (dict, list, str, bytes)},
}


class BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only what a CIFAR batch needs (defence in depth
    behind the MD5 check: a pickle can run any callable it names)."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not needed by a CIFAR batch") from None


def _read_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = BatchUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except Exception as err:  # a damaged pickle can fail in many ways; all mean the same here
        raise CorruptDataError(f"{where}: cannot be read as a CIFAR batch ({err})") from err
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        raise CorruptDataError(f"{where}: expected a dict with 'data' and 'labels'")
    data, labels = entry["data"], np.asarray(entry["labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        got = f"{getattr(data, 'dtype', type(data).__name__)} {np.shape(data)}"
        raise CorruptDataError(f"{where}: 'data' must be uint8 [N, 3072] (3 planes of 32x32), got {got}")
    in_range = labels.size == 0 or 0 <= labels.min() <= labels.max() <= 9
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer) or not in_range:
        raise CorruptDataError(f"{where}: 'labels' must be {len(data)} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _check_split(split: str) -> None:
    checks.choice(split, "split", SPLITS)


def _concat(batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*batches)
    return np.concatenate(xs), np.concatenate(ys)


def read_cifar_archive(
    path: str | os.PathLike, split: str, *, md5: str | None = CIFAR10_ARCHIVE_MD5
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split of ``cifar-10-python.tar.gz`` straight from the archive.

    The MD5 of the whole archive is checked before anything in it is opened,
    let alone unpickled; ``md5=None`` skips that (tests only). Returns uint8
    images ``[N, 3, 32, 32]`` and int labels ``[N]``.
    """
    _check_split(split)
    path = Path(path)
    blob = path.read_bytes()
    if md5 is not None and _md5(blob) != md5:
        raise CorruptDataError(
            f"{path}: MD5 {_md5(blob)} is not the published {md5}; the archive is damaged or not "
            "the CIFAR-10 python release. Nothing in it was unpickled."
        )
    members = [f"{CIFAR10_FOLDER}/{b}" for b in _CIFAR_BATCHES[split]]
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            blobs = [(m, tar.extractfile(m).read()) for m in members]
    except (tarfile.TarError, KeyError, AttributeError, OSError, EOFError, zlib.error) as err:
        raise CorruptDataError(f"{path}: cannot read {', '.join(members)} from the archive ({err!r})") from err
    return _concat(_read_batch(b, f"{path}:{m}") for m, b in blobs)


def read_cifar_folder(
    folder: str | os.PathLike, split: str, *, md5: Mapping[str, str] | None = CIFAR10_BATCH_MD5
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split from the extracted ``cifar-10-batches-py/`` folder; each
    batch's MD5 is checked before it is unpickled (``md5=None`` skips, tests only)."""
    _check_split(split)
    folder = Path(folder)
    batches = []
    for name in _CIFAR_BATCHES[split]:
        path = folder / name
        if not path.is_file():
            raise CorruptDataError(f"{folder}: {name} is missing from the extracted CIFAR-10 folder")
        blob = path.read_bytes()
        if md5 is not None and _md5(blob) != md5[name]:
            raise CorruptDataError(f"{path}: MD5 {_md5(blob)} is not the published {md5[name]}; not unpickled")
        batches.append(_read_batch(blob, str(path)))
    return _concat(batches)


def _load_cifar10(split: str, root) -> tuple[np.ndarray, np.ndarray, str]:
    def locate() -> Path | None:
        for folder in data_dirs("cifar10", root):
            for candidate in (folder / CIFAR10_ARCHIVE, folder / CIFAR10_FOLDER):
                if candidate.exists():
                    return candidate
        return None

    found = locate()
    if found is None:
        _download_or_raise("cifar10", split, root, needs=f"{CIFAR10_ARCHIVE} or {CIFAR10_FOLDER}/")
        found = locate()
        if found is None:
            raise DataNotFoundError(f"torchvision downloaded CIFAR-10, but {CIFAR10_ARCHIVE} is still missing")
    if found.is_dir():
        x, y = read_cifar_folder(found, split)
    else:
        x, y = read_cifar_archive(found, split)
    return x, y, str(found)


# ------------------------------------------------------- not found / download

_HOW_TO_GET = {
    "fashion-mnist": (
        "apt-get install dataset-fashion-mnist (puts it in /usr/share/datasets/fashion-mnist/), or put the four "
        "IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz in $ADVLIB_DATA/fashion-mnist/ (or pass root=)."
    ),
    "mnist": (
        "put the four IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in $ADVLIB_DATA/mnist/ (or pass root=); "
        "where the network allows, installing torchvision lets load() download them there."
    ),
    "cifar10": (
        f"put {CIFAR10_ARCHIVE} (the python version, https://www.cs.toronto.edu/~kriz/cifar.html) or its "
        f"extracted {CIFAR10_FOLDER}/ in $ADVLIB_DATA/cifar10/ (or pass root=); where the network allows, "
        "installing torchvision lets load() download it there."
    ),
}


def _download_or_raise(name: str, split: str, root, needs: str) -> None:
    """Let torchvision download ``name`` into the first data directory, or raise
    DataNotFoundError that says everything that was tried."""
    dirs = data_dirs(name, root)
    try:
        import torchvision.datasets as tvd
        from torchvision.datasets.utils import download_url
    except ImportError as err:
        tried = f"torchvision: not importable ({err}), so no download was tried"
    else:
        try:
            _download(tvd, download_url, name, dirs[0])
            return
        except Exception as err:  # any failure of the download becomes the reason in the one error
            tried = f"torchvision: download into {dirs[0]} failed: {err!r}"
    looked = "\n".join(f"  {d}" for d in dirs)
    raise DataNotFoundError(
        f"{name} ({split}) not found: looked for {needs} in\n{looked}\n{tried}\nTo get it: {_HOW_TO_GET[name]}"
    )


def _download(tvd, download_url, name: str, dest: Path) -> None:
    if name == "cifar10":
        download_url(tvd.CIFAR10.url, str(dest), tvd.CIFAR10.filename, tvd.CIFAR10.tgz_md5)
        return
    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    for filename, md5 in cls.resources:
        errors = []
        for mirror in cls.mirrors:
            try:
                download_url(f"{mirror}{filename}", str(dest), filename, md5)
                break
            except Exception as err:  # try the next mirror; report all if none works
                errors.append(f"{mirror}: {err!r}")
        else:
            raise OSError(f"{filename}: " + "; ".join(errors))
