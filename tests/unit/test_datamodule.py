"""FaceDataModule: identity exclusion, bad images, label noise, run-dir records, uint8 batches, plug-in datasets."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, default_collate

from facetrain.data.datamodule import FaceDataModule
from facetrain.data.dataset import FaceDataset, IndexedDataset
from facetrain.data.image_files import IdentityFolders, LabelledImages
from facetrain.data.index import PathTable
from facetrain.data.sampler import EpochSeeded, ResumableSampler
from facetrain.data.transforms import GpuAugment, Uint8CHW, find_normalize, to_tensor
from facetrain.utils.instantiate import instantiate
from tests.unit.test_decode import damage_jpeg_middle

# CASIA-WebFace layout: 7-digit identity folders, 3-digit images; two ids of SphereFace's LFW-overlap list
IDENTITIES = {"0000045": 4, "0000099": 4, "0000100": 3, "0166921": 3, "1193098": 2}


def normalize(p_flip: float = 0.5) -> A.Compose:
    return A.Compose([A.HorizontalFlip(p=p_flip), A.Normalize(mean=[0.5] * 3, std=[0.5] * 3), ToTensorV2()])


EVAL = A.Compose([A.Normalize(mean=[0.5] * 3, std=[0.5] * 3), ToTensorV2()])


@pytest.fixture
def casia(tmp_path: Path) -> Path:
    root = tmp_path / "CASIA-WebFace"
    rng = np.random.default_rng(0)
    for identity, count in IDENTITIES.items():
        (root / identity).mkdir(parents=True)
        for i in range(1, count + 1):
            image = cv2.GaussianBlur(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8), (5, 5), 0)
            cv2.imwrite(str(root / identity / f"{i:03d}.jpg"), image)
    (root / "notes.txt").write_text("not an identity folder")
    return root


def make(root: Path, tmp_path: Path, **kwargs) -> FaceDataModule:
    kwargs.setdefault("output_dir", tmp_path / "run")
    kwargs.setdefault("train_transform", normalize())
    kwargs.setdefault("eval_transform", EVAL)
    return FaceDataModule(str(root), batch_size=2, num_workers=0, **kwargs)


def built(root: Path, tmp_path: Path, **kwargs) -> FaceDataModule:
    """A data module after ``setup("fit")``: the training data scanned, checked, noised and recorded."""
    dm = make(root, tmp_path, **kwargs)
    dm.setup("fit")
    return dm


def record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "data_exclusions.json").read_text())


def test_plain_identity_folders_and_record(casia: Path, tmp_path: Path) -> None:
    dm = built(casia, tmp_path)
    assert dm.num_classes == 5 and dm.num_images == 16
    assert dm.classes == sorted(IDENTITIES)
    rec = record(tmp_path)
    assert rec["num_classes"] == 5 and rec["exclude_identities"] is None
    assert rec["bad_images"]["count"] == 0 and rec["label_noise"]["kind"] == "none"
    assert not (tmp_path / "run" / "label_noise.csv").exists() and not (tmp_path / "run" / "bad_images.txt").exists()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.float32 and images.shape == (2, 3, 24, 24) and labels.shape == (2,)


def test_exclude_sphereface3(casia: Path, tmp_path: Path) -> None:
    dm = built(casia, tmp_path, exclude_identities="sphereface3")
    assert dm.num_classes == 3 and dm.num_images == 11
    assert dm.classes == ["0000045", "0000099", "0000100"]
    ex = record(tmp_path)["exclude_identities"]
    assert ex["list"] == "sphereface3" and ex["file"].endswith("sphereface3.txt")
    assert ex["removed"] == [{"identity": "0166921", "images": 3}, {"identity": "1193098", "images": 2}]
    assert ex["not_in_data"] == ["1056413"] and ex["images_removed"] == 5
    dm.setup("fit")
    assert set(np.unique(dm.train_set.labels)) == {0, 1, 2}
    assert not any("0166921" in p or "1193098" in p for p in dm.train_set.paths)


def test_exclude_user_file(casia: Path, tmp_path: Path) -> None:
    user = tmp_path / "mine.txt"
    user.write_text("# overlap found by hand\n0000099  # someone\n9999999\n")
    dm = built(casia, tmp_path, exclude_identities=str(user))
    assert dm.num_classes == 4
    ex = record(tmp_path)["exclude_identities"]
    assert ex["list"] == str(user) and ex["not_in_data"] == ["9999999"]


def test_bad_config_values_fail_at_construction(casia: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.exclude_identities='lfw17'"):
        make(casia, tmp_path, exclude_identities="lfw17")
    with pytest.raises(ValueError, match=r"data\.label_noise\.rate\b.*(0\.9.*\[0, 0\.6\]|\[0, 0\.6\].*0\.9)"):
        make(casia, tmp_path, label_noise={"kind": "symmetric", "rate": 0.9, "seed": 0})
    with pytest.raises(ValueError, match="data.on_bad_image"):
        make(casia, tmp_path, on_bad_image="ignore")
    with pytest.raises(ValueError, match="data.verify_images"):
        make(casia, tmp_path, verify_images="full")


def corrupt(root: Path) -> tuple[Path, Path]:
    data = (root / "0000045" / "001.jpg").read_bytes()
    truncated = root / "0000045" / "002.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    empty = root / "0000100" / "003.jpg"
    empty.write_bytes(b"")
    return truncated, empty


def test_bad_images_error_names_the_file_before_training(casia: Path, tmp_path: Path) -> None:
    truncated, _ = corrupt(casia)
    dm = make(casia, tmp_path)
    with pytest.raises(OSError, match="2 unreadable training image") as info:
        dm.setup("fit")
    assert str(truncated) in str(info.value) and "data.on_bad_image=skip" in str(info.value)


def test_jpeg_damaged_in_the_middle_is_caught_by_the_decode_check(casia: Path, tmp_path: Path) -> None:
    damaged = casia / "0000099" / "002.jpg"
    damaged.write_bytes(damage_jpeg_middle(damaged.read_bytes()))
    assert built(casia, tmp_path, verify_images="header").num_images == 16  # markers intact: the quick check passes
    with pytest.raises(OSError, match="1 unreadable training image.*Corrupt JPEG data") as info:
        built(casia, tmp_path, verify_images="decode")
    assert str(damaged) in str(info.value)
    dm = built(casia, tmp_path, verify_images="decode", on_bad_image="skip")
    assert dm.num_images == 15 and str(damaged) in (tmp_path / "run" / "bad_images.txt").read_text()


def test_bad_images_skip_counts_lists_and_warns_once(casia: Path, tmp_path: Path, caplog) -> None:
    truncated, empty = corrupt(casia)
    (casia / "0000099" / "001.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="facetrain.data.datamodule"):
        dm = built(casia, tmp_path, on_bad_image="skip")
        assert dm.num_images == 13 and dm.num_classes == 5
        dm.setup("fit")  # a second call reuses the built data: no second warning
    warnings = [r for r in caplog.records if "skipped" in r.message]
    assert len(warnings) == 1 and "skipped 3 unreadable" in warnings[0].getMessage()
    lines = (tmp_path / "run" / "bad_images.txt").read_text().splitlines()
    assert lines[0].startswith("# 3 training images skipped")
    assert {line.split("\t")[0] for line in lines[1:]} == {str(truncated), str(empty), str(casia / "0000099/001.jpg")}
    assert all(p not in dm.train_set.paths for p in (str(truncated), str(empty)))
    assert record(tmp_path)["bad_images"]["count"] == 3


def test_skip_that_empties_an_identity_drops_the_class(casia: Path, tmp_path: Path) -> None:
    for image in (casia / "1193098").iterdir():
        image.write_bytes(b"")
    dm = built(casia, tmp_path, on_bad_image="skip")
    assert dm.num_classes == 4 and "1193098" not in dm.classes
    assert record(tmp_path)["bad_images"]["identities_emptied"] == ["1193098"]


def test_symmetric_noise_through_the_datamodule(casia: Path, tmp_path: Path) -> None:
    dm = make(casia, tmp_path, label_noise={"kind": "symmetric", "rate": 0.25, "seed": 1})
    clean = make(casia, tmp_path / "clean")
    dm.setup("fit")
    clean.setup("fit")
    changed = np.flatnonzero(dm.train_set.labels != clean.train_set.labels)
    assert len(changed) == 4  # round(0.25 * 16)
    rows = list(csv.DictReader((tmp_path / "run" / "label_noise.csv").read_text().splitlines()))
    assert [int(r["index"]) for r in rows] == changed.tolist()
    assert all(r["path"] == clean.train_set.paths[int(r["index"])] for r in rows)
    assert record(tmp_path)["label_noise"] == {
        "kind": "symmetric", "rate": 0.25, "seed": 1, "num_corrupted": 4, "file": "label_noise.csv"
    }  # fmt: skip


def test_outlier_noise_swaps_images_not_labels(casia: Path, tmp_path: Path) -> None:
    dm = make(casia, tmp_path, exclude_identities="sphereface3", label_noise={"kind": "outlier", "rate": 0.3})
    clean = make(casia, tmp_path / "clean", exclude_identities="sphereface3")
    dm.setup("fit")
    clean.setup("fit")
    assert np.array_equal(dm.train_set.labels, clean.train_set.labels)
    swapped = np.flatnonzero(np.asarray(dm.train_set.paths) != np.asarray(clean.train_set.paths))
    assert len(swapped) == 3  # round(0.3 * 11), noise after the exclusion
    rows = list(csv.DictReader((tmp_path / "run" / "label_noise.csv").read_text().splitlines()))
    for r in rows:
        i, donor = int(r["index"]), int(r["donor_index"])
        assert dm.train_set.paths[i] == clean.train_set.paths[donor] == r["donor_path"]
        assert int(r["true_label"]) == clean.train_set.labels[donor] != int(r["noisy_label"])


def test_records_fall_back_to_the_trainer_root(casia: Path, tmp_path: Path) -> None:
    dm = built(casia, tmp_path, output_dir=None, label_noise={"kind": "symmetric", "rate": 0.2})
    assert dm.num_classes == 5  # built by the task's explicit setup, before a trainer exists
    assert not (tmp_path / "run").exists()
    dm.trainer = SimpleNamespace(default_root_dir=str(tmp_path / "trainer_root"), training=True)
    dm.setup("fit")
    assert (tmp_path / "trainer_root" / "data_exclusions.json").is_file()
    assert (tmp_path / "trainer_root" / "label_noise.csv").is_file()
    assert dm.train_set.bad_image_log == str(tmp_path / "trainer_root" / "bad_images.txt")  # load-time skips too


def test_uint8_batches_match_the_cpu_pipeline(casia: Path, tmp_path: Path) -> None:
    ref = make(casia, tmp_path / "ref", train_transform=normalize(p_flip=0.0))
    fast = make(casia, tmp_path, train_transform=None, uint8_batches=True, gpu_augment={"flip_p": 0.0})
    ref.setup("fit")
    fast.setup("fit")
    assert isinstance(fast.train_set.transform, Uint8CHW)
    items = [fast.train_set[i] for i in range(4)]
    batch = torch.stack([image for image, _ in items])
    assert batch.dtype == torch.uint8
    out = fast.on_after_batch_transfer([batch, torch.tensor([label for _, label in items])], 0)
    expected = torch.stack([ref.train_set[i][0] for i in range(4)])
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=0)
    assert ref.on_after_batch_transfer([expected, out[1]], 0)[0] is expected  # float batches pass through


def test_uint8_batches_refuse_to_change_the_augmentation(casia: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"also has \['RandomBrightnessContrast'\]"):
        make(
            casia,
            tmp_path,
            uint8_batches=True,
            train_transform=A.Compose([A.RandomBrightnessContrast(), A.Normalize(mean=[0.5] * 3, std=[0.5] * 3)]),
        )
    with pytest.raises(ValueError, match="flip_p=0.2"):
        make(casia, tmp_path, uint8_batches=True, gpu_augment=GpuAugment(flip_p=0.2))
    with pytest.raises(ValueError, match="normalised alike"):
        make(casia, tmp_path, uint8_batches=True, gpu_augment={"mean": [0.4] * 3}, train_transform=None)


def test_every_normalisation_must_equal_the_declared_one(casia: Path, tmp_path: Path) -> None:
    imagenet = A.Compose([A.Normalize(), ToTensorV2()])  # albumentations' default: ImageNet mean/std
    with pytest.raises(ValueError, match=r"data.train_transform normalises with mean=\[0.485.*data.eval_transform"):
        make(casia, tmp_path, train_transform=imagenet)
    declared = {"mean": [0.5] * 3, "std": [0.5] * 3}
    with pytest.raises(ValueError, match=r"data.eval_transform normalises with mean=\[0.485.*data.normalize"):
        make(casia, tmp_path, eval_transform=imagenet, normalize=declared)
    with pytest.raises(ValueError, match=r"data.gpu_augment normalises .*data.normalize with mean=\[0.5"):
        make(
            casia,
            tmp_path,
            uint8_batches=True,
            train_transform=None,
            gpu_augment={"mean": [0.4] * 3},
            normalize=declared,
        )
    make(casia, tmp_path, normalize=declared)  # agreeing transforms are accepted


def test_the_config_declares_normalisation_once(compose_cfg) -> None:
    from hydra.utils import instantiate

    cfg = compose_cfg("data.normalize.mean=[0.25,0.5,0.75]", "data.uint8_batches=true", "data.train_transform=null")
    data = instantiate(cfg.data, source=None)
    mean = (0.25, 0.5, 0.75)
    assert find_normalize(data.eval_transform)[0] == mean and data.gpu_augment.mean == mean
    cfg = compose_cfg("data.normalize.std=[0.25,0.25,0.25]")
    data = instantiate(cfg.data, source=None)
    assert find_normalize(data.train_transform)[1] == find_normalize(data.eval_transform)[1] == (0.25,) * 3


class TinyModule(pl.LightningModule):
    """Records what training_step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 24 * 24, 5)
        self.seen: list[torch.dtype] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.seen.append(images.dtype)
        return torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_applies_the_datamodule_hook(casia: Path, tmp_path: Path) -> None:
    dm = make(casia, tmp_path, uint8_batches=True)
    model = TinyModule()
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert model.seen == [torch.float32, torch.float32]


class FakePack(FaceDataset):
    """A stand-in for RecordIOFaces: labels, num_classes, optional classes, images via to_tensor."""

    def __init__(self, transform=None, names: bool = True) -> None:
        self.transform = transform
        self.labels = np.repeat(np.arange(4), 5)
        self.num_classes = 4
        if names:
            self.classes = ["0000045", "0166921", "0000099", "1056413"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = np.full((8, 8, 3), index, np.uint8)
        return to_tensor(self.transform, image), int(self.labels[index])


def test_plugin_dataset_with_exclusion_and_noise(tmp_path: Path) -> None:
    dm = FaceDataModule(
        str(tmp_path / "pack"), batch_size=2, num_workers=0, dataset=FakePack, output_dir=tmp_path / "run",
        exclude_identities="sphereface3", label_noise={"kind": "outlier", "rate": 0.2, "seed": 0},
        uint8_batches=True, train_transform=None,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.num_classes == 2 and dm.num_images == 10
    assert isinstance(dm.train_set, IndexedDataset) and dm.train_set.num_classes == 2
    image, label = dm.train_set[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    kept = {int(dm.train_set[i][0][0, 0, 0]) for i in range(10)}
    assert kept.isdisjoint(range(5, 10)) and kept.isdisjoint(range(15, 20))  # excluded ids never shown
    rows = (tmp_path / "run" / "label_noise.csv").read_text().splitlines()
    assert rows[0] == "index,true_label,noisy_label,donor_index" and len(rows) == 3
    assert record(tmp_path)["source"]["kind"] == "FakePack"


def test_plugin_dataset_untouched_and_without_names(tmp_path: Path) -> None:
    dm = FaceDataModule(str(tmp_path), batch_size=2, num_workers=0, dataset=FakePack, output_dir=tmp_path / "run")
    dm.setup("fit")
    assert isinstance(dm.train_set, FakePack) and dm.num_classes == 4
    unnamed = FaceDataModule(
        str(tmp_path), batch_size=2, num_workers=0, dataset=lambda transform: FakePack(transform, names=False),
        exclude_identities="lfw16",
    )  # fmt: skip
    with pytest.raises(ValueError, match="needs identity names"):
        unnamed.setup("fit")
    with pytest.raises(ValueError, match="on_bad_image=skip applies to image-file datasets"):
        FaceDataModule(str(tmp_path), dataset=FakePack, on_bad_image="skip")


def test_configs_compose_and_build(compose_cfg, casia: Path) -> None:
    cfg = compose_cfg("data=casia_webface", f"data.train_root={casia}", "data.num_workers=0", "data.batch_size=2")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert dm.exclusion_list.spec == "sphereface3" and dm.num_classes == 3
    assert Path(cfg.data.output_dir) == Path(cfg.paths.output_dir)
    assert (Path(cfg.paths.output_dir) / "data_exclusions.json").is_file()
    fast = instantiate(compose_cfg("data.uint8_batches=true").data)  # default transforms agree with gpu_augment
    assert isinstance(fast.gpu_augment, GpuAugment) and fast.gpu_augment.flip_p == 0.5
    noisy = compose_cfg("data.label_noise.kind=symmetric", "data.label_noise.rate=0.2")
    assert instantiate(noisy.data).label_noise.rate == 0.2
    rec = compose_cfg("data=insightface_rec", "data.train_root=/data/faces_webface_112x112")
    assert rec.data.dataset._target_ == "facetrain.data.recordio.RecordIOFaces"
    assert rec.data.dataset.root_or_prefix == "/data/faces_webface_112x112"


def test_labelled_images_keeps_numpy_arrays(casia: Path, tmp_path: Path) -> None:
    dm = make(casia, tmp_path)
    dm.setup("fit")
    assert isinstance(dm.train_set, LabelledImages)
    # No Python list of str: a PathTable (two NumPy arrays) and an int64 label array.
    assert isinstance(dm.train_set.paths, PathTable) and isinstance(dm.train_set.labels, np.ndarray)
    assert dm.train_set.paths.data.dtype == np.uint8 and dm.train_set.labels.dtype == np.int64


def test_insightface_rec_config_through_the_seam(compose_cfg, casia: Path, tmp_path: Path) -> None:
    from facetrain.data.convert import folders_to_recordio

    pack = tmp_path / "faces_pack"
    pack.mkdir()
    folders_to_recordio(casia, pack, show_progress=False)
    overrides = ["data=insightface_rec", f"data.train_root={pack}", "data.num_workers=0", "data.batch_size=4"]
    dm = instantiate(compose_cfg(*overrides, "data.uint8_batches=true", "data.worker_buffers=3").data)
    dm.setup("fit")
    assert dm.num_classes == 5 and dm.num_images == 16
    assert dm.train_set.fetches_batches and dm.train_set.worker_buffers == 3  # data.worker_buffers reaches the pack
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 24, 24)
    noisy = instantiate(compose_cfg(*overrides, "data.label_noise.kind=symmetric", "data.label_noise.rate=0.5").data)
    noisy.setup("fit")
    assert isinstance(noisy.train_set, IndexedDataset) and noisy.noise_record is not None
    assert len(noisy.noise_record) == 8


class PerSampleImages(LabelledImages):
    """LabelledImages without the batched fetch: each sample through ``__getitem__``, then ``default_collate``."""

    fetches_batches = False


def test_uint8_train_loader_fetches_whole_batches_like_the_per_sample_path(casia: Path, tmp_path: Path) -> None:
    dm = FaceDataModule(
        str(casia), batch_size=4, num_workers=2, output_dir=tmp_path / "run", train_transform=None,
        eval_transform=EVAL, uint8_batches=True, seed=3,
    )  # fmt: skip
    dm.setup("fit")
    assert dm.train_set.fetches_batches
    ts = dm.train_set
    reference = DataLoader(
        EpochSeeded(PerSampleImages(ts.paths, ts.labels, ts.transform), 3),
        sampler=ResumableSampler(len(ts), seed=3),
        batch_size=4,
        drop_last=True,
        num_workers=2,
        collate_fn=default_collate,
    )
    fast, slow = list(dm.train_dataloader()), list(reference)
    assert len(fast) == len(slow) == len(ts) // 4
    for (images, labels), (ref_images, ref_labels) in zip(fast, slow, strict=True):
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 24, 24) and labels.dtype == torch.int64
        assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_training_loader_iterator_draws_nothing_from_the_global_rng(casia: Path, tmp_path: Path) -> None:
    # A resume restores the global RNG (dropout) from the checkpoint, then builds the loader's iterator: if that drew
    # its base seed from the global generator, every later dropout mask would differ from the uninterrupted run's.
    dm = make(casia, tmp_path)
    dm.setup("fit")
    loader = dm.train_dataloader()
    before = torch.get_rng_state()
    iter(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_noise_record_and_training_labels_are_one_application_of_the_noise(casia: Path, tmp_path: Path) -> None:
    # Known answer, transcribed from noise.py's documented algorithm rather than calling it: the same seed applied
    # twice picks the same indices again, so only the labels themselves tell one application from two.
    rate, seed = 0.25, 1
    dm = make(casia, tmp_path, label_noise={"kind": "symmetric", "rate": rate, "seed": seed})
    clean = make(casia, tmp_path / "clean")
    dm.setup("fit")
    clean.setup("fit")
    labels, c = np.asarray(clean.train_set.labels), clean.num_classes
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(labels), size=round(rate * len(labels)), replace=False))
    expected = labels.copy()
    expected[idx] = (labels[idx] + rng.integers(1, c, size=len(idx))) % c
    assert np.array_equal(dm.train_set.labels, expected)
    rows = list(csv.DictReader((tmp_path / "run" / "label_noise.csv").read_text().splitlines()))
    assert [int(r["index"]) for r in rows] == idx.tolist()
    assert [int(r["true_label"]) for r in rows] == labels[idx].tolist()  # the identity actually in the image
    assert [int(r["noisy_label"]) for r in rows] == expected[idx].tolist()  # the label trained on
    record = dm.noise_record
    assert np.array_equal(record.true_labels, labels[idx]) and np.array_equal(record.noisy_labels, expected[idx])


def test_outlier_images_are_one_application_of_the_noise(casia: Path, tmp_path: Path) -> None:
    # Each victim shows its donor's own image; swapping twice would show the donor's donor wherever a donor is itself
    # a victim.
    dm = make(casia, tmp_path, label_noise={"kind": "outlier", "rate": 0.5, "seed": 3})
    clean = make(casia, tmp_path / "clean")
    dm.setup("fit")
    clean.setup("fit")
    rows = list(csv.DictReader((tmp_path / "run" / "label_noise.csv").read_text().splitlines()))
    expected = list(clean.train_set.paths)
    for r in rows:
        expected[int(r["index"])] = clean.train_set.paths[int(r["donor_index"])]
        assert int(r["noisy_label"]) == clean.train_set.labels[int(r["index"])]  # labels are kept
        assert int(r["true_label"]) == clean.train_set.labels[int(r["donor_index"])]
    assert list(dm.train_set.paths) == expected
    assert np.array_equal(dm.train_set.labels, clean.train_set.labels)
    victims = {int(r["index"]) for r in rows}
    assert victims & {int(r["donor_index"]) for r in rows}  # the case where a second swap would show


class CountingSource:
    """A ``source`` that counts how often it is asked to make the data."""

    def __init__(self) -> None:
        self.calls = 0

    def ensure(self) -> None:
        self.calls += 1


def test_the_pipeline_runs_once_from_setup_not_from_a_property(casia: Path, tmp_path: Path) -> None:
    source = CountingSource()
    dm = make(casia, tmp_path, source=source)
    for name in ("num_classes", "num_images", "classes", "noise_record", "bad_images"):
        with pytest.raises(RuntimeError, match=rf"FaceDataModule\.{name} .*datamodule\.setup\('fit'\)"):
            getattr(dm, name)
    assert source.calls == 0 and not (tmp_path / "run").exists()  # reading a property did no work
    dm.setup("fit")
    first = dm.train_set
    dm.setup("fit")  # what Lightning's fit does after the task's explicit call
    assert source.calls == 1 and dm.train_set is first and dm.num_classes == 5


def test_a_dataset_outside_the_interface_is_refused(tmp_path: Path) -> None:
    dm = FaceDataModule(str(tmp_path), batch_size=2, num_workers=0, dataset=lambda transform: [(0, 0)] * 4)
    with pytest.raises(TypeError, match=r"data\.dataset built a list, not a facetrain\.data\.dataset\.FaceDataset"):
        dm.setup("fit")


def test_identity_folders_and_recordio_declare_one_interface(casia: Path, tmp_path: Path) -> None:
    from facetrain.data.convert import folders_to_recordio
    from facetrain.data.recordio import RecordIOFaces

    folders = IdentityFolders(casia)
    folders_to_recordio(casia, tmp_path / "pack", show_progress=False)
    pack = RecordIOFaces(tmp_path / "pack")
    assert folders.num_classes == pack.num_classes == 5 and np.array_equal(folders.labels, pack.labels)
    assert folders.classes == sorted(IDENTITIES) and pack.classes is None  # packs store numeric labels only
    assert folders.describe(0) == str(casia / "0000045" / "001.jpg") and "record key" in pack.describe(0)
    assert folders.find_bad(np.arange(16), "header") == [] and pack.find_bad(np.arange(16), "header") is None
    assert not folders.seeds_samples and IdentityFolders(casia, normalize()).seeds_samples
    view = folders.select(np.asarray([3, 0]), np.asarray([1, 0]), ["a", "b"])
    assert isinstance(view, LabelledImages) and view.num_classes == 2 and list(view.paths) == [
        folders.paths[3], folders.paths[0]
    ]  # fmt: skip
    assert isinstance(pack.select(np.asarray([3, 0]), np.asarray([1, 0]), None), IndexedDataset)
