"""advlib.data: the strict readers on files written here, the real Fashion-MNIST
from Debian's package when installed, and the two built-in sets."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from advlib import data
from advlib.data import CorruptDataError, DataNotFoundError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------ helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes() + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray) -> Path:
    blob = idx_bytes(arr)
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


def write_idx_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def fake_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, list[int]]:
    """A batch pickled as the release is: protocol 2, the array rebuilt by
    numpy.core.multiarray._reconstruct (the NumPy 1 name)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    entry = {"batch_label": f"batch {seed}", "labels": labels, "data": pixels, "filenames": [f"{i}.png" for i in range(n)]}
    blob = pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return blob, pixels, labels


def write_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


@pytest.fixture
def cifar_archive(tmp_path):
    """A small archive with the release's layout: 5 train batches of 2, a test batch of 3."""
    members, expected = {}, {}
    for seed, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        blob, pixels, labels = cifar_batch(3 if name == "test_batch" else 2, seed)
        members[name], expected[name] = blob, (pixels, labels)
    path = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    return path, hashlib.md5(path.read_bytes()).hexdigest(), members, expected


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data set on this machine is visible and torchvision cannot be imported."""
    monkeypatch.setenv("ADVLIB_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIR", tmp_path / "system")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    return tmp_path


# ---------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return data.load("fashion-mnist", "train"), data.load("fashion-mnist", "test")


def test_real_fashion_mnist(fashion):
    for ds, n in zip(fashion, (60000, 10000)):
        assert ds.x.shape == (n, 1, 28, 28) and ds.x.dtype == torch.float32
        assert ds.y.shape == (n,) and ds.y.dtype == torch.int64
        assert ds.x.min().item() == 0.0 and ds.x.max().item() == 1.0
        # Fashion-MNIST is exactly balanced: 6000 / 1000 per class
        assert ds.y.bincount(minlength=10).tolist() == [n // 10] * 10
        assert len(ds.classes) == 10 and ds.classes[9] == "Ankle boot"
        assert str(FASHION_DIR) in ds.source
        described = json.loads(json.dumps(ds.describe()))
        assert described["n"] == n and described["shape"] == [1, 28, 28] and described["options"]["verify"] is True
    # the first labels as every reader of the release sees them (a misread header would shift them)
    assert fashion[0].y[:5].tolist() == [9, 0, 0, 3, 0] and fashion[1].y[:5].tolist() == [9, 2, 1, 1, 6]


def test_limit_keeps_the_first_samples(fashion):
    few = data.load("fashion-mnist", "test", limit=7)
    assert torch.equal(few.x, fashion[1].x[:7]) and torch.equal(few.y, fashion[1].y[:7])
    assert few.describe()["options"]["limit"] == 7


def test_debian_files_are_recompressed_but_verified_by_content():
    if not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    path = FASHION_DIR / "t10k-labels-idx1-ubyte.gz"
    gz_md5, content_md5 = data._IDX_MD5["fashion-mnist"]["t10k-labels-idx1-ubyte"]
    with pytest.raises(CorruptDataError, match="MD5"):
        data.read_idx(path, ndim=1, md5=(gz_md5,))
    assert data.read_idx(path, ndim=1, md5=(content_md5,)).shape == (10000,)


# ------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images, labels = fake_images(5)
    assert np.array_equal(data.read_idx(write_idx(tmp_path / f"i{suffix}", images), ndim=3), images)
    assert np.array_equal(data.read_idx(write_idx(tmp_path / f"l{suffix}", labels), ndim=1), labels)
    # the md5 of the content is accepted whether the file is gzipped or not
    content_md5 = hashlib.md5(idx_bytes(labels)).hexdigest()
    assert np.array_equal(data.read_idx(tmp_path / f"l{suffix}", ndim=1, md5=content_md5), labels)
    with pytest.raises(CorruptDataError, match="MD5"):
        data.read_idx(tmp_path / f"l{suffix}", ndim=1, md5="0" * 32)


@pytest.mark.parametrize("gz", [False, True])
def test_load_reads_files_back_exactly(tmp_path, isolated, gz):
    images, labels = fake_images(6)
    write_idx_split(tmp_path / "mine", "test", images, labels, gz=gz)
    ds = data.load("mnist", "test", root=tmp_path / "mine", verify=False)
    assert ds.x.shape == (6, 1, 28, 28)
    assert np.array_equal((ds.x[:, 0] * 255).round().numpy().astype(np.uint8), images)
    assert np.array_equal(ds.y.numpy(), labels)


def test_idx_truncated(tmp_path):
    images, _ = fake_images(3)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:-10])
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte: truncated"):
        data.read_idx(path, ndim=3)


def test_idx_truncated_gzip(tmp_path):
    images, _ = fake_images(3)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-20])
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte.gz: not a complete gzip"):
        data.read_idx(path, ndim=3)


def test_idx_trailing_bytes(tmp_path):
    _, labels = fake_images(3)
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(labels) + b"\0")
    with pytest.raises(CorruptDataError, match="trailing"):
        data.read_idx(path, ndim=1)


def _header(*dims: int) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dimensions_beyond_64_bits(tmp_path, gz):
    # (2^31)^2 * 4 = 2^64 wraps to 0 in int64 arithmetic: a header-only file
    # would then look complete. Counted exactly, it is refused by name.
    path = tmp_path / ("wrap.gz" if gz else "wrap")
    pack = gzip.compress if gz else bytes
    path.write_bytes(pack(_header(2**31, 2**31, 4)))
    with pytest.raises(CorruptDataError, match=rf"{path.name}: dimensions \(2147483648, 2147483648, 4\) need 18446744073709551632 bytes, beyond a 64-bit size"):
        data.read_idx(path, ndim=3)
    path.write_bytes(pack(_header(2**32 - 1, 2**32 - 1, 2**32 - 1)))
    with pytest.raises(CorruptDataError, match="beyond a 64-bit size"):
        data.read_idx(path, ndim=3)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_larger_than_the_file_allocates_nothing_of_its_size(tmp_path, gz):
    import tracemalloc

    # 2^40 bytes announced (a terabyte), 100 present
    raw = _header(2**20, 2**10, 2**10) + bytes(100)
    path = tmp_path / ("big.gz" if gz else "big")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptDataError, match=rf"{path.name}: truncated: dimensions \(1048576, 1024, 1024\) need 1099511627792 bytes, found 116"):
            data.read_idx(path, ndim=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # read in chunks of 1 MiB at most


def test_idx_trailing_bytes_in_gzip(tmp_path):
    _, labels = fake_images(3)
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels) + bytes(5000)))
    with pytest.raises(CorruptDataError, match=r"labels.gz: has trailing bytes: dimensions \(3,\) need 11 bytes, found 12 or more"):
        data.read_idx(path, ndim=1)


@pytest.mark.parametrize("head", [bytes([0, 0, 8, 1]), bytes([0, 0, 0x0D, 3]), bytes([1, 0, 8, 3])])
def test_idx_bad_magic(tmp_path, head):
    images, _ = fake_images(2)
    path = tmp_path / "images"
    path.write_bytes(head + idx_bytes(images)[4:])
    with pytest.raises(CorruptDataError, match="magic number"):
        data.read_idx(path, ndim=3)


def test_idx_count_mismatch(tmp_path, isolated):
    images, labels = fake_images(5)
    write_idx_split(tmp_path / "mine", "train", images, labels[:4])
    with pytest.raises(CorruptDataError, match="5 images but .* 4 labels"):
        data.load("mnist", "train", root=tmp_path / "mine", verify=False)


def test_idx_label_out_of_range(tmp_path, isolated):
    images, labels = fake_images(4)
    labels[2] = 10
    write_idx_split(tmp_path / "mine", "train", images, labels)
    with pytest.raises(CorruptDataError, match="label 10 outside 0..9"):
        data.load("mnist", "train", root=tmp_path / "mine", verify=False)


def test_mnist_found_via_advlib_data(isolated):
    images, labels = fake_images(4)
    write_idx_split(isolated / "env" / "mnist", "train", images, labels)
    ds = data.load("mnist", "train", verify=False)
    assert len(ds) == 4 and str(isolated / "env" / "mnist") in ds.source
    assert data.data_dirs("mnist") == [isolated / "env" / "mnist", isolated / "system" / "mnist"]
    # files with the standard names but not the published bytes are refused by default
    with pytest.raises(CorruptDataError, match="MD5 .* not the published"):
        data.load("mnist", "train")


# ---------------------------------------------------------- not found


def test_not_found_names_every_directory(isolated):
    with pytest.raises(DataNotFoundError) as info:
        data.load("mnist", "test")
    msg = str(info.value)
    for folder in data.data_dirs("mnist"):
        assert str(folder) in msg
    assert "torchvision" in msg and "$ADVLIB_DATA/mnist/" in msg and "t10k-images-idx3-ubyte" in msg
    assert isinstance(info.value, FileNotFoundError)

    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist", "train", root=isolated / "nowhere")
    with pytest.raises(DataNotFoundError, match="cifar-10-python.tar.gz") as info:
        data.load("cifar10", "test")
    assert str(isolated / "system" / "cifar10") in str(info.value)


def fake_torchvision(monkeypatch, download_url):
    tv, tvd, utils = (types.ModuleType(n) for n in ("torchvision", "torchvision.datasets", "torchvision.datasets.utils"))
    tvd.MNIST = type("MNIST", (), {"mirrors": ["https://a/", "https://b/"], "resources": [
        (f"{stem}.gz", "0" * 32) for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]})
    utils.download_url = download_url
    tv.datasets, tvd.utils = tvd, utils
    for mod in (tv, tvd, utils):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)


def test_torchvision_download_failure_is_in_the_error(isolated, monkeypatch):
    def offline(url, root, filename, md5):
        raise OSError(f"no network for {url}")

    fake_torchvision(monkeypatch, offline)
    with pytest.raises(DataNotFoundError, match="download into .* failed: .*no network for https://b/"):
        data.load("mnist", "train")


def test_torchvision_download_lands_in_the_data_dir(isolated, monkeypatch):
    images, labels = fake_images(3)
    blobs = {"images": idx_bytes(images), "labels": idx_bytes(labels)}

    def download_url(url, root, filename, md5):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / filename).write_bytes(gzip.compress(blobs["images" if "images" in filename else "labels"]))

    fake_torchvision(monkeypatch, download_url)
    ds = data.load("mnist", "test", verify=False)
    assert len(ds) == 3 and (isolated / "env" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


# ------------------------------------------------------------------ CIFAR


def test_cifar_archive_with_its_md5(cifar_archive):
    path, md5, _, expected = cifar_archive
    x, y = data.read_cifar_archive(path, "train", md5=md5)
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8
    want = np.concatenate([expected[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(x.reshape(10, -1), want)
    assert y.tolist() == sum((expected[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    x, y = data.read_cifar_archive(path, "test", md5=md5)
    assert np.array_equal(x.reshape(3, -1), expected["test_batch"][0]) and y.tolist() == expected["test_batch"][1]


def test_cifar_md5_mismatch_raises_before_unpickling(tmp_path, monkeypatch):
    # A batch that, if ever unpickled by anything, calls a function recording it.
    calls = []
    trap = types.ModuleType("advlib_test_tripwire")
    trap.boom = lambda: calls.append("unpickled")
    monkeypatch.setitem(sys.modules, "advlib_test_tripwire", trap)
    tripwire = b"cadvlib_test_tripwire\nboom\n)R."
    pickle.loads(tripwire)
    assert calls == ["unpickled"]  # the tripwire works
    calls.clear()

    members = {name: tripwire for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    path = write_tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    seen = []
    monkeypatch.setattr(data, "_read_batch", lambda blob, where: seen.append(where))
    with pytest.raises(CorruptDataError, match="MD5 .* Nothing in it was unpickled"):
        data.read_cifar_archive(path, "train")  # the published md5
    assert seen == [] and calls == []
    monkeypatch.undo()

    # and with the checksum skipped, the restricted unpickler still refuses it
    with pytest.raises(CorruptDataError, match="refused to load advlib_test_tripwire.boom"):
        data.read_cifar_archive(path, "test", md5=None)
    assert calls == []


def test_cifar_truncated_archive(cifar_archive, tmp_path):
    path, md5, _, _ = cifar_archive
    short = tmp_path / "short.tar.gz"
    short.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="MD5"):
        data.read_cifar_archive(short, "train", md5=md5)
    with pytest.raises(CorruptDataError, match="cannot read"):
        data.read_cifar_archive(short, "test", md5=hashlib.md5(short.read_bytes()).hexdigest())


def test_load_cifar10_checks_the_published_md5(cifar_archive, isolated):
    path, _, _, _ = cifar_archive
    with pytest.raises(CorruptDataError, match="c58f30108f718f92721af3b95e74349a"):
        data.load("cifar10", "test", root=path.parent)


def test_cifar_extracted_folder(cifar_archive, tmp_path):
    _, _, members, expected = cifar_archive
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, blob in members.items():
        (folder / name).write_bytes(blob)
    md5s = {name: hashlib.md5(blob).hexdigest() for name, blob in members.items()}
    x, y = data.read_cifar_folder(folder, "test", md5=md5s)
    assert np.array_equal(x.reshape(3, -1), expected["test_batch"][0])
    with pytest.raises(CorruptDataError, match="test_batch: MD5"):
        data.read_cifar_folder(folder, "test")


@pytest.mark.parametrize("evil", [b"cos\nsystem\n(S'echo pwned'\ntR.", b"cposix\nsystem\n(S'echo pwned'\ntR.",
                                  b"cbuiltins\neval\n(S'1'\ntR."])
def test_restricted_unpickler_refuses_other_callables(evil):
    with pytest.raises(pickle.UnpicklingError, match="refused to load"):
        data.BatchUnpickler(io.BytesIO(evil)).load()
    with pytest.raises(CorruptDataError, match="refused"):
        data._read_batch(evil, "evil")


# ----------------------------------------------------------- built-in sets


@pytest.mark.parametrize("size, hw", [(None, 8), (8, 8), (28, 28)])
def test_digits_sizes(size, hw):
    train, test = data.load("digits", "train", size=size), data.load("digits", "test", size=size)
    assert (len(train), len(test)) == (1347, 450)
    assert train.x.shape[1:] == (1, hw, hw) and train.x.dtype == torch.float32
    assert train.x.min().item() == 0.0 and train.x.max().item() == 1.0
    per_class = torch.cat([train.y, test.y]).bincount(minlength=10)
    assert (test.y.bincount(minlength=10) - per_class * 0.25).abs().max() <= 1  # stratified 25% of each class
    if size == 28:
        # MNIST's layout: a 20x20 digit box centred, 4 blank pixels each side
        assert train.x[..., :4, :].abs().sum() == 0 and train.x[..., 24:, :].abs().sum() == 0
        assert train.x[..., :, :4].abs().sum() == 0 and train.x[..., :, 24:].abs().sum() == 0
        small = data.load("digits", "train").x
        assert torch.allclose(train.x[..., 4:24, 4:24].mean((1, 2, 3)), small.mean((1, 2, 3)), atol=0.05)


def test_digits_deterministic_and_limited():
    a, b = data.load("digits", "test"), data.load("digits", "test")
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    few = data.load("digits", "test", limit=10)
    assert torch.equal(few.x, a.x[:10]) and few.describe()["n"] == 10
    train = data.load("digits", "train")
    flat = {tuple(row) for row in train.x.flatten(1).tolist()}
    assert sum(tuple(row) in flat for row in a.x.flatten(1).tolist()) < 5  # train and test (nearly) disjoint


def test_circles():
    train, test = data.load("circles", "train"), data.load("circles", "test")
    assert (len(train), len(test)) == (750, 250) and train.x.shape[1] == 2
    both = torch.cat([train.x, test.x])
    assert both.min().item() >= 0.0 and both.max().item() <= 1.0 and both.max().item() > 0.99
    assert test.y.bincount().tolist() == [125, 125] and train.y.bincount().tolist() == [375, 375]
    assert train.classes == ("outer (B)", "inner (R)")
    radius = (train.x - 0.5).norm(dim=1)
    assert radius[train.y == 1].mean() < 0.7 * radius[train.y == 0].mean()  # label 1 is the inner circle
    again = data.load("circles", "train")
    assert torch.equal(train.x, again.x)
    other = data.load("circles", "train", seed=1, n_samples=200)
    assert len(other) == 150 and other.describe()["options"]["seed"] == 1


# ------------------------------------------------------------------ errors


def test_errors_list_what_is_allowed():
    with pytest.raises(ValueError, match="name must be one of 'digits', 'fashion-mnist', 'mnist', 'cifar10', 'circles', 'fashion-mnist-32rgb'.*got 'svhn'"):
        data.load("svhn", "train")
    with pytest.raises(ValueError, match="split must be one of 'train', 'test', got 'val'"):
        data.load("digits", "val")
    with pytest.raises(ValueError, match="unknown option.*noise.*'digits'.*size=None"):
        data.load("digits", "train", noise=0.1)
    with pytest.raises(ValueError, match="unknown option.*size.*'cifar10'.*none"):
        data.load("cifar10", "train", size=28)
    with pytest.raises(ValueError, match="size must be one of None, 8, 28, got 16"):
        data.load("digits", "train", size=16)
    with pytest.raises(ValueError, match=r"factor must be a finite number in \(0, 1\), got 1.5"):
        data.load("circles", "train", factor=1.5)
    with pytest.raises(TypeError, match="n_samples must be an integer >= 8, got 100.0"):
        data.load("circles", "train", n_samples=100.0)
    for bad in (0, -1, 2.5, True):
        with pytest.raises((ValueError, TypeError), match=rf"limit must be an integer >= 1 or None, got {bad!r}|limit must be an integer >= 1, got {bad!r}"):
            data.load("digits", "train", limit=bad)


def test_data_dirs_order(tmp_path, monkeypatch):
    monkeypatch.delenv("ADVLIB_DATA", raising=False)
    assert data.data_dirs("cifar10")[0] == Path("data/cifar10").absolute()
    assert data.data_dirs("cifar10")[1] == data.SYSTEM_DATA_DIR / "cifar10"
    assert data.data_dirs("mnist", root=tmp_path)[0] == tmp_path
    assert data.data_dirs("digits") == []
