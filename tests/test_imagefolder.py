"""Image folders: layout checks, label and pixel round-trips, seeded batches, rank shards."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import ImageFolder

from prunelab.cli import main
from prunelab.data import (
    DatasetError,
    ImageFolderSpec,
    TensorBatches,
    TensorSplits,
    load_dataset,
    open_imagefolder,
    write_imagefolder,
)
from prunelab.data.imagefolder import (
    _crop_params,
    _hold_out,
    _StrictImageFolder,
    class_dir_names,
)

SIZE = 32
TRAIN_PER_CLASS, VAL_PER_CLASS = 20, 6  # 200 training files, 60 test files


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MNIST written as an image folder: 20 training and 6 test images per class, 32x32."""
    out = tmp_path_factory.mktemp("folders") / "mnist"
    write_imagefolder("mnist", out, size=SIZE, train_per_class=TRAIN_PER_CLASS,
                      val_per_class=VAL_PER_CLASS, seed=0)
    return out


def spec(root: Path, **kw: object) -> ImageFolderSpec:
    base: dict = {"val_size": 45, "seed": 0, "image_size": SIZE, "resize_size": SIZE,
                  "workers": 0}
    return ImageFolderSpec(root, **{**base, **kw})


def raw(root: Path, **kw: object) -> ImageFolderSpec:
    """Eval transform at the written size, no normalisation: pixels / 255 as written."""
    return spec(root, mean=(0, 0, 0), std=(1, 1, 1), train_augment=False, **kw)


def epoch(batches: object, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch as the trainer runs it: the global RNG and the permutation seeded."""
    torch.manual_seed(seed)
    batches.set_epoch(seed)  # type: ignore[attr-defined]
    return list(batches)  # type: ignore[call-overload]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True)
    )


def rows(x: torch.Tensor, y: torch.Tensor) -> Counter:
    """A batch as a multiset of (image bytes, label)."""
    return Counter((x[i].numpy().tobytes(), int(y[i])) for i in range(len(y)))


def resized(gray: np.ndarray, size: int) -> np.ndarray:
    """What write_imagefolder makes of a source image, as RGB floats in [0, 1]."""
    img = Image.fromarray(gray)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255


# --------------------------------------------------------------------------- writing


def test_written_folder_has_the_imagenet_layout(folder: Path) -> None:
    record = json.loads((folder / "classes.json").read_text())
    assert record["classes"] == [str(d) for d in range(10)]
    assert record["train_counts"] == [TRAIN_PER_CLASS] * 10
    assert record["val_counts"] == [VAL_PER_CLASS] * 10
    for part, n in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        assert sorted(p.name for p in (folder / part).iterdir()) == record["classes"]
        files = sorted((folder / part / "3").iterdir())
        assert len(files) == n and all(p.suffix == ".png" for p in files)
        with Image.open(files[0]) as img:
            assert (img.mode, img.size) == ("RGB", (SIZE, SIZE))
    assert [p.name for p in folder.parent.iterdir()] == ["mnist"]  # no tmp folder left


def test_labels_and_pixels_round_trip(folder: Path) -> None:
    source = load_dataset("mnist", val_size=0, normalize=False)
    splits = open_imagefolder(raw(folder))
    for split, official in (("test", source.test), ("val", source.train),
                            ("train", source.train)):
        files = splits.files(split)
        index = [int(Path(p).stem) for p, _ in files]
        assert [c for _, c in files] == official.labels[index].tolist()
        if split == "train":
            continue
        batches = getattr(splits, f"{split}_batches")(16)
        x = torch.cat([xb for xb, _ in batches])
        y = torch.cat([yb for _, yb in batches])
        assert y.tolist() == official.labels[index].tolist()
        gray = (official.images[index, 0] * 255).round().to(torch.uint8).numpy()
        want = np.stack([resized(g, SIZE) for g in gray])
        np.testing.assert_allclose(x.numpy(), want, atol=1e-6)


def test_pixels_round_trip_exactly_at_the_source_size(tmp_path: Path) -> None:
    out = tmp_path / "exact"
    out.mkdir()  # an existing empty directory is fine
    write_imagefolder("mnist", out, size=28, train_per_class=3, val_per_class=2, seed=1)
    source = load_dataset("mnist", val_size=0, normalize=False)
    splits = open_imagefolder(ImageFolderSpec(out, val_size=0, image_size=28, resize_size=28,
                                              mean=(0, 0, 0), std=(1, 1, 1), workers=0))
    index = [int(Path(p).stem) for p, _ in splits.files("test")]
    x = torch.cat([xb for xb, _ in splits.test_batches(64)])
    assert torch.equal(x, source.test.images[index].expand(-1, 3, -1, -1))


def test_fashion_mnist_class_names_round_trip(tmp_path: Path) -> None:
    try:
        source = load_dataset("fashion-mnist", val_size=0, normalize=False, download=False)
    except DatasetError:
        pytest.skip("Fashion-MNIST is not installed")
    record = write_imagefolder("fashion-mnist", tmp_path / "fm", size=8, train_per_class=2,
                               val_per_class=1, download=False)
    assert record["classes"][0] == "0_T-shirt_top" and record["classes"][9] == "9_Ankle_boot"
    splits = open_imagefolder(ImageFolderSpec(tmp_path / "fm", val_size=0, workers=0))
    assert splits.classes == record["classes"]
    files = splits.files("test")
    assert [c for _, c in files] == source.test.labels[[int(Path(p).stem)
                                                        for p, _ in files]].tolist()


def test_class_dir_names_sort_in_label_order() -> None:
    names = class_dir_names([str(i) for i in range(12)])
    assert names[:2] == ["00_0", "01_1"] and sorted(names) == names
    assert class_dir_names(["a/b", ".hidden"]) == ["a_b", "hidden"]


def test_missing_dataset_is_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="Fashion-MNIST file"):
        write_imagefolder("fashion-mnist", tmp_path / "out", data_root=tmp_path / "empty",
                          download=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_existing_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=str(out)):
        write_imagefolder("mnist", out, train_per_class=1, val_per_class=1)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["make-imagefolder", "mnist", str(out), "--train-per-class", "1"]) == 2


def test_cli_writes_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["make-imagefolder", "mnist", str(out), "--size", "8", "--train-per-class",
                 "2", "--val-per-class", "1", "--seed", "3"]) == 0
    assert "20 train and 10 val images" in capsys.readouterr().out
    assert len(list((out / "train").rglob("*.png"))) == 20
    assert json.loads((out / "classes.json").read_text())["seed"] == 3


def test_too_many_per_class_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val_per_class=5000 is more than"):
        write_imagefolder("mnist", tmp_path / "x", train_per_class=1, val_per_class=5000)
    assert list(tmp_path.iterdir()) == []  # checked before anything is written


# --------------------------------------------------------------------------- layout


def tiny(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 2) -> Path:
    """A valid folder of random 8x8 PNGs."""
    g = np.random.default_rng(0)
    for part in ("train", "val"):
        for c in classes:
            (root / part / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    root / part / c / f"{i}.png")
    return root


# Each breaks the valid folder r and returns (the folder to open, the path the error names).


def _no_root(r: Path) -> tuple[Path, Path]:
    return r / "absent", r / "absent"


def _file_root(r: Path) -> tuple[Path, Path]:
    (r / "file").write_text("x")
    return r / "file", r / "file"


def _no_val(r: Path) -> tuple[Path, Path]:
    shutil.rmtree(r / "val")
    return r, r / "val"


def _empty_class(r: Path) -> tuple[Path, Path]:
    (r / "train" / "c").mkdir()
    (r / "val" / "c").mkdir()
    return r, r / "train" / "c"


def _text_file(r: Path) -> tuple[Path, Path]:
    (r / "train" / "a" / "notes.txt").write_text("x")
    return r, r / "train" / "a" / "notes.txt"


def _stray_file(r: Path) -> tuple[Path, Path]:
    shutil.copy(r / "train" / "a" / "0.png", r / "train" / "loose.png")
    return r, r / "train" / "loose.png"


def _other_classes(r: Path) -> tuple[Path, Path]:
    (r / "val" / "b").rename(r / "val" / "z")
    return r, r


def _no_classes(r: Path) -> tuple[Path, Path]:
    shutil.rmtree(r / "train")
    (r / "train").mkdir()
    return r, r / "train"


@pytest.mark.parametrize(("make", "words"), [
    (_no_root, "does not exist"),
    (_file_root, "is not a directory"),
    (_no_val, "has no val/ directory"),
    (_empty_class, "holds no image files"),
    (_text_file, "is not an image"),
    (_stray_file, "is not inside a class directory"),
    (_other_classes, "only in train/: b; only in val/: z"),
    (_no_classes, "holds no class directories"),
])
def test_layout_errors_are_one_line_naming_the_path(tmp_path: Path, make, words: str) -> None:
    opened, named = make(tiny(tmp_path / "f"))
    with pytest.raises(DatasetError) as err:
        open_imagefolder(ImageFolderSpec(opened, val_size=0, workers=0))
    msg = str(err.value)
    assert "\n" not in msg and words in msg and f"'{named}'" in msg, msg
    assert f"expected {opened}/train/<class>/*.png|jpg and {opened}/val/<class>/" in msg


def test_samples_are_imagefolders_and_hidden_entries_are_skipped(tmp_path: Path) -> None:
    root = tiny(tmp_path / "f", classes=("a", "b", "c"), per_class=3)
    want = [(p, c) for p, c in ImageFolder(str(root / "train")).samples]
    (root / "train" / ".ipynb_checkpoints").mkdir()  # ImageFolder would make it a class
    (root / "train" / "a" / ".DS_Store").write_text("x")
    assert _StrictImageFolder(root / "train", root).samples == want  # same order too
    splits = open_imagefolder(ImageFolderSpec(root, val_size=0, workers=0))
    assert splits.classes == ["a", "b", "c"]
    assert sorted(splits.files("train")) == sorted(want)


def test_val_size_must_leave_training_images(tmp_path: Path) -> None:
    root = tiny(tmp_path / "f")
    with pytest.raises(ValueError, match="val_size=4 is out of range"):
        open_imagefolder(ImageFolderSpec(root, val_size=4, workers=0))


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_names_the_file(tmp_path: Path, workers: int) -> None:
    root = tiny(tmp_path / "f")
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG
    splits = open_imagefolder(ImageFolderSpec(root, val_size=0, workers=workers,
                                              image_size=8, resize_size=8))
    with pytest.raises(DatasetError) as err:
        epoch(splits.train_batches(2), 0)
    msg = str(err.value)
    assert f"image file '{bad}' cannot be read" in msg and "\n" not in msg, msg


@pytest.mark.parametrize(("field", "value"), [
    ("val_size", -1), ("image_size", 0), ("workers", -1), ("prefetch_factor", 0),
    ("subset", 0), ("std", (1, 0, 1)), ("mean", (0, 0)), ("seed", 1.5),
])
def test_spec_rejects_bad_values(field: str, value: object) -> None:
    base = {"val_size": 1}
    with pytest.raises(ValueError, match=f"{field}=.* is invalid; allowed"):
        ImageFolderSpec("x", **{**base, field: value})


# --------------------------------------------------------------------------- splits


def test_hold_out_is_stratified_seeded_and_disjoint(folder: Path) -> None:
    splits = open_imagefolder(spec(folder, val_size=50))
    val, train = splits.files("val"), splits.files("train")
    assert Counter(c for _, c in val) == dict.fromkeys(range(10), 5)
    assert len(train) == 150 and not {p for p, _ in val} & {p for p, _ in train}
    assert open_imagefolder(spec(folder, val_size=50)).files("val") == val
    assert open_imagefolder(spec(folder, val_size=50, seed=1)).files("val") != val
    labels = np.array([0] * 7 + [1] * 2 + [2])
    v, t = _hold_out(labels, 5, seed=3)
    assert np.bincount(labels[v], minlength=3).tolist() == [4, 1, 0]  # 3.5, 1, 0.5
    assert sorted(np.concatenate([v, t]).tolist()) == list(range(10))


def test_subset_and_meta(folder: Path) -> None:
    splits = open_imagefolder(spec(folder, subset=20))
    m = splits.meta
    assert (m["train_size"], m["val_split_size"], m["test_size"]) == (20, 20, 20)
    assert m["name"] == "imagefolder" and m["num_classes"] == splits.num_classes == 10
    assert splits.has_test and json.loads(json.dumps(m)) == m
    again = open_imagefolder(ImageFolderSpec.from_meta(m, workers=0))
    assert all(again.files(s) == splits.files(s) for s in ("train", "val", "test"))
    assert len({c for _, c in splits.files("test")}) > 5  # a spread, not the first class


def test_example_is_the_first_validation_images(folder: Path) -> None:
    splits = open_imagefolder(spec(folder))
    x = splits.example(5)
    assert x.shape == (5, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(x, next(iter(splits.val_batches(5)))[0])
    assert torch.equal(x, splits.example(5))
    none_held_out = open_imagefolder(spec(folder, val_size=0))
    assert torch.equal(none_held_out.example(3), next(iter(none_held_out.test_batches(3)))[0])


def test_train_batches_use_a_distributed_sampler(folder: Path) -> None:
    b = open_imagefolder(spec(folder)).train_batches(16, rank=1, world=3)
    s = b.sampler
    assert isinstance(s, DistributedSampler)
    assert (s.num_replicas, s.rank, s.shuffle, s.seed, s.drop_last) == (3, 1, True, 0, False)
    assert b.num_examples == 52 and len(b) == 4  # ceil(155 / 3), in batches of 16
    x, y = next(iter(b))
    assert x.shape == (16, 3, SIZE, SIZE) and x.dtype == torch.float32 and y.dtype == torch.int64


@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches_are_a_function_of_the_seed(folder: Path, workers: int) -> None:
    b = open_imagefolder(spec(folder, workers=workers)).train_batches(32)
    first = epoch(b, 5)
    assert same(epoch(b, 5), first)  # persistent workers too: same seed, same epoch
    other = epoch(b, 6)
    assert not torch.equal(other[0][0], first[0][0])
    fresh = open_imagefolder(spec(folder, workers=2 - workers)).train_batches(32)
    assert same(epoch(fresh, 5), first)  # and the same for any number of workers


def test_augmentation_is_on_and_varies_with_the_seed(folder: Path) -> None:
    aug = open_imagefolder(spec(folder))
    plain = open_imagefolder(spec(folder, train_augment=False))
    a, p = epoch(aug.train_batches(8), 0)[0], epoch(plain.train_batches(8), 0)[0]
    assert torch.equal(a[1], p[1]) and not torch.equal(a[0], p[0])  # same images, cropped
    torch.manual_seed(0)
    b = aug.train_batches(8)
    b.set_epoch(0)
    next(iter(b))
    torch.manual_seed(1)  # same permutation, other crops
    assert not torch.equal(next(iter(b))[0], a[0])
    assert all(0 <= i <= 48 - h and 0 <= j <= 64 - w
               for i, j, h, w in (_crop_params(64, 48, random.Random(s))
                                  for s in range(200)))


def test_train_transform_is_torchvisions_given_the_crop_box(folder: Path) -> None:
    import torchvision.transforms.functional as TF
    from torchvision import transforms as T

    from prunelab.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, _TrainTransform, load_image

    ours = _TrainTransform(spec(folder, image_size=24))
    finish = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for seed, (path, _) in enumerate(ImageFolder(str(folder / "train")).samples[:40]):
        img = load_image(path)
        rng = random.Random(seed)
        box = _crop_params(img.width, img.height, rng)
        want = TF.resized_crop(img, *box, [24, 24], T.InterpolationMode.BILINEAR, antialias=True)
        if rng.random() < 0.5:
            want = TF.hflip(want)
        assert torch.equal(ours(img, seed), finish(want))


@pytest.mark.parametrize("workers", [0, 2])
def test_global_rng_use_does_not_depend_on_workers(folder: Path, workers: int) -> None:
    splits = open_imagefolder(spec(folder, workers=workers))
    torch.manual_seed(0)
    list(splits.val_batches(32))
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())  # eval: none
    b = splits.train_batches(32)
    for _ in range(2):  # epoch 2 reuses persistent workers
        torch.manual_seed(0)
        list(b)
        after = torch.get_rng_state()
        torch.manual_seed(0)
        torch.empty((), dtype=torch.int64).random_()  # one draw per epoch, nothing else
        assert torch.equal(after, torch.get_rng_state())


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_shards_are_disjoint_and_complete(folder: Path, split: str) -> None:
    splits = open_imagefolder(spec(folder))
    make = getattr(splits, f"{split}_batches")
    whole = torch.cat([x for x, _ in make(8)])
    shards = [torch.cat([x for x, _ in make(8, rank=r, world=2)]) for r in (0, 1)]
    assert torch.equal(shards[0], whole[0::2]) and torch.equal(shards[1], whole[1::2])
    assert sum(make(8, rank=r, world=2).num_examples for r in (0, 1)) == len(whole)


@pytest.mark.parametrize("augment", [False, True])
def test_ranks_deal_the_one_process_batches(folder: Path, augment: bool) -> None:
    """Union over ranks of batch b (world 2, B/2 each) == batch b of one process (B)."""
    splits = open_imagefolder(spec(folder, train_augment=augment))  # 155 training images
    one = epoch(splits.train_batches(16), 3)
    ranks = [epoch(splits.train_batches(8, rank=r, world=2), 3) for r in (0, 1)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 10
    for b in range(9):
        assert rows(*ranks[0][b]) + rows(*ranks[1][b]) == rows(*one[b])
    pad = rows(one[0][0][:1], one[0][1][:1])  # 155 -> 156: the epoch's first image again
    assert rows(*ranks[0][9]) + rows(*ranks[1][9]) == rows(*one[9]) + pad


# --------------------------------------------------------------------------- tensors


def _sampler_order(n: int, rank: int, world: int, seed: int) -> list[int]:
    s = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=0)
    s.set_epoch(seed)
    return list(s)


@pytest.mark.parametrize(("n", "world"), [(10, 1), (10, 3), (11, 4), (3, 5)])
def test_tensor_batches_deal_like_distributed_sampler(n: int, world: int) -> None:
    x, y = torch.arange(n).float().unsqueeze(1), torch.arange(n)
    for rank in range(world):
        b = TensorBatches(x, y, batch_size=2, rank=rank, world=world)
        b.set_epoch(7)
        got = torch.cat([yb for _, yb in b]).tolist()
        assert got == _sampler_order(n, rank, world, 7)
        assert b.num_examples == len(got) and len(b) == -(-len(got) // 2)


def test_tensor_batches_one_process_order_is_unchanged() -> None:
    x, y = torch.randn(50, 3), torch.arange(50)
    b = TensorBatches(x, y, batch_size=8)
    b.set_epoch(4)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.cat([yb for _, yb in b]), order)
    with pytest.raises(ValueError, match="rank=2 of world=2 is invalid"):
        TensorBatches(x, y, batch_size=8, rank=2, world=2)


def test_tensor_splits_have_the_batch_methods() -> None:
    g = torch.Generator().manual_seed(0)
    s = TensorSplits(torch.randn(37, 1, 2, 2, generator=g), torch.arange(37),
                     torch.randn(9, 1, 2, 2, generator=g), torch.arange(9),
                     torch.randn(5, 1, 2, 2, generator=g), torch.arange(5))
    one = s.train_batches(8)
    one.set_epoch(2)
    whole = list(one)
    ranks = []
    for r in (0, 1):
        b = s.train_batches(4, rank=r, world=2)
        b.set_epoch(2)
        ranks.append(list(b))
    for b in range(len(whole) - 1):
        assert rows(*ranks[0][b]) + rows(*ranks[1][b]) == rows(*whole[b])
    for make, n in ((s.val_batches, 9), (s.test_batches, 5)):
        shards = [torch.cat([yb for _, yb in make(2, rank=r, world=2)]) for r in (0, 1)]
        assert shards[0].tolist() == list(range(0, n, 2))
        assert shards[1].tolist() == list(range(1, n, 2))
    with pytest.raises(ValueError, match="no test split"):
        TensorSplits(s.x_train, s.y_train, s.x_val, s.y_val).test_batches(4)
