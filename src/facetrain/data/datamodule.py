"""The training DataModule: CASIA-WebFace style identity folders (default) or a plug-in dataset such as RecordIO.

What it does before the first step, in this order (docs/protocols.md §6: remove test-set overlap before injecting
noise):

1. list the training data (identity folders, or ``dataset(transform=...)`` for a plug-in dataset);
2. drop the identities of ``exclude_identities`` (LFW overlap, :mod:`facetrain.data.overlap`);
3. check every image file (``verify_images``) and stop, or skip and record, per ``on_bad_image``;
4. apply ``label_noise`` (:mod:`facetrain.data.noise`) to the training labels only;
5. write what it did to the run directory: ``data_exclusions.json`` always, ``label_noise.csv`` and
   ``bad_images.txt`` when they apply.

All of it happens on the first access to :attr:`FaceDataModule.num_classes` (the train task asks before building the
model), so every data problem surfaces before any expensive work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from facetrain.data.images import (
    ON_BAD_IMAGE,
    VERIFY_IMAGES,
    GpuAugment,
    IndexedDataset,
    LabelledImages,
    Transform,
    Uint8CHW,
    collate_batch,
    find_bad_images,
    find_normalize,
    scan_identity_folders,
)
from facetrain.data.noise import LabelNoiseConfig, NoiseRecord, apply_label_noise, write_noise_csv
from facetrain.data.overlap import IdentityList, drop_empty_classes, exclude_identities, load_identity_list
from facetrain.data.sampler import EpochSeeded, ResumableSampler
from facetrain.data.shared_batches import DEFAULT_SLOTS
from facetrain.utils.io import atomic_write, write_json_atomic
from facetrain.utils.schema import Constraint, Interval, OneOf

log = logging.getLogger(__name__)

EXCLUSIONS_FILE = "data_exclusions.json"
NOISE_FILE = "label_noise.csv"
BAD_IMAGES_FILE = "bad_images.txt"
# What data.uint8_batches replaces: flip and normalisation move to the device, ToTensorV2 to Uint8CHW.
_UINT8_REPLACES = {"HorizontalFlip", "Normalize", "ToTensorV2"}


class DataSource(Protocol):
    """Something that makes a dataset exist on disk before it is read (e.g. the synthetic generator)."""

    def ensure(self) -> object: ...


class LabelledDataset(Protocol):
    """What a plug-in training dataset (``data.dataset``) must provide, e.g. ``facetrain.data.recordio.RecordIOFaces``.

    ``__getitem__`` returns ``(image tensor, label)`` with the image made by ``to_tensor(transform, rgb)``;
    ``labels`` is the int label of every sample; ``classes`` (optional) names the identities, needed only for
    ``data.exclude_identities``.
    """

    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


class FaceDataModule(pl.LightningDataModule):
    """Training data for face recognition.

    The class count comes from the data, never from the config: the identity folders that hold at least one
    (readable) image, minus excluded identities.

    Args:
        train_root: Root of the identity-folder tree (``train_root/<identity>/<image>``); for a plug-in dataset, the
            path its config passes on (e.g. the directory holding ``train.rec``).
        train_transform: albumentations pipeline for training images (augmentation, normalisation, ToTensorV2).
        eval_transform: Deterministic pipeline for evaluation images (normalisation, ToTensorV2); the evaluation
            callbacks use the same one so train and test images are normalised alike.
        batch_size: Images per device and step.
        num_workers: DataLoader worker processes.
        source: Optional generator whose ``ensure()`` creates the data first (the synthetic dataset).
        pin_memory: Pin host memory (useful on GPU).
        dataset: Plug-in training dataset factory (a Hydra ``_partial_``), called as ``dataset(transform=...)`` and
            returning a :class:`LabelledDataset`; None (default) reads identity folders under ``train_root``.
        output_dir: Run directory for the data records; None writes them in ``setup`` to the trainer's
            ``default_root_dir`` instead.
        exclude_identities: A shipped list name (``sphereface3``, ``lfw16``) or a file of identity folder names.
        label_noise: ``{kind: none|symmetric|outlier, rate: 0..0.6, seed: int}``; training data only.
        on_bad_image: ``error`` stops at the first unreadable image and names it; ``skip`` drops and records them.
        verify_images: Check of every image file at start-up: ``header`` (first/last bytes: empty and truncated
            files; seconds for 500k images), ``decode`` (also decodes every image), ``none``. Applies to image
            files (identity folders) only.
        uint8_batches: Hand uint8 ``B×3×H×W`` batches to the device and flip + normalise there
            (:meth:`on_after_batch_transfer`), instead of normalising float images in the workers.
        uint8_transform: With ``uint8_batches``: optional CPU pipeline that keeps uint8 ``H×W×3`` (e.g. a crop).
        worker_buffers: With ``uint8_batches`` and workers: shared-memory batch buffers each worker reuses once the
            main process has dropped their batch (:mod:`facetrain.data.shared_batches`); costs ``worker_buffers ×
            batch`` bytes of ``/dev/shm`` per worker. 0 allocates a new segment per batch, as ``default_collate``.
        gpu_augment: With ``uint8_batches``: flip probability and normalisation (:class:`GpuAugment`, or a mapping
            of its arguments); its mean/std must equal ``eval_transform``'s Normalize.
        seed: Seed of the sample order and of every sample's augmentation (:mod:`facetrain.data.sampler`): epoch e's
            order and each image's flips depend only on ``(seed, e, index)``, and the position inside the epoch is
            saved in checkpoints, so a resumed run continues the exact sequence (no sample repeated or skipped).
    """

    #: Valid values, checked per config key before the data is read (facetrain.utils.schema).
    config_constraints: ClassVar[dict[str, Constraint]] = {
        "batch_size": Interval(2, integer=True),
        "num_workers": Interval(0, integer=True),
        "on_bad_image": OneOf(ON_BAD_IMAGE),
        "verify_images": OneOf(VERIFY_IMAGES),
        "uint8_batches": OneOf((True, False)),
        "pin_memory": OneOf((True, False)),
        "worker_buffers": Interval(0, integer=True),
        "seed": Interval(0, 2**32 - 1, integer=True),
    }

    def __init__(
        self,
        train_root: str,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        source: DataSource | None = None,
        pin_memory: bool = False,
        dataset: Callable[..., LabelledDataset] | None = None,
        output_dir: str | os.PathLike | None = None,
        exclude_identities: str | os.PathLike | None = None,
        label_noise: Mapping[str, Any] | LabelNoiseConfig | None = None,
        on_bad_image: str = "error",
        verify_images: str = "header",
        uint8_batches: bool = False,
        uint8_transform: Transform | None = None,
        gpu_augment: GpuAugment | Mapping[str, Any] | None = None,
        worker_buffers: int = DEFAULT_SLOTS,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 2:
            raise ValueError(f"data.batch_size must be >= 2 (BatchNorm needs two samples), got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if worker_buffers < 0:
            raise ValueError(f"data.worker_buffers must be >= 0, got {worker_buffers}")
        if on_bad_image not in ON_BAD_IMAGE:
            raise ValueError(f"data.on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
        if verify_images not in VERIFY_IMAGES:
            raise ValueError(f"data.verify_images must be one of {VERIFY_IMAGES}, got {verify_images!r}")
        if dataset is not None and on_bad_image == "skip":
            raise ValueError(
                "data.on_bad_image=skip applies to image-file datasets (identity folders); a plug-in data.dataset "
                "reports its own bad records"
            )
        self.train_root = Path(train_root)
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.source = source
        self.pin_memory = pin_memory
        self.dataset_factory = dataset
        self.output_dir = None if output_dir is None else Path(output_dir)
        # Parsed now: a typo in a list name or a bad list line fails before the data is even scanned.
        self.exclusion_list: IdentityList | None = (
            None if exclude_identities in (None, "") else load_identity_list(exclude_identities)  # type: ignore[arg-type]
        )
        self.label_noise = LabelNoiseConfig.from_mapping(label_noise)
        self.on_bad_image = on_bad_image
        self.verify_images = verify_images
        self.uint8_batches = bool(uint8_batches)
        self.uint8_transform = uint8_transform
        self.worker_buffers = int(worker_buffers)
        if isinstance(gpu_augment, Mapping):
            gpu_augment = GpuAugment(**{k: v for k, v in gpu_augment.items() if k != "_target_"})
        self.gpu_augment: GpuAugment = gpu_augment or GpuAugment()
        if self.uint8_batches:
            self._check_uint8_setup()

        self.seed = int(seed)
        self._sampler: ResumableSampler | None = None
        self._pending_state: dict[str, int] | None = None
        self._built = False
        self._classes: list[str] | None = None
        self._paths: np.ndarray | None = None  # identity folders: image paths before noise (index space of records)
        self._train_paths: np.ndarray | None = None  # identity folders: image shown at each position after noise
        self._labels: np.ndarray | None = None
        self._num_classes = 0
        self._plugin_base: Dataset | None = None
        self._plugin_index: np.ndarray | None = None
        self._bad: list[tuple[str, str]] = []
        self._noise: NoiseRecord | None = None
        self._summary: dict[str, Any] = {}
        self._records_dir: Path | None = None

    # -------------------------------------------------------------------------------------------------------------
    # Validation
    # -------------------------------------------------------------------------------------------------------------

    def _check_uint8_setup(self) -> None:
        """uint8 batches replace train_transform: refuse to silently lose augmentations or change normalisation."""
        if self.train_transform is not None:
            names = [type(t).__name__ for t in getattr(self.train_transform, "transforms", [self.train_transform])]
            lost = [n for n in names if n not in _UINT8_REPLACES]
            if lost:
                raise ValueError(
                    f"data.uint8_batches=true replaces data.train_transform by data.uint8_transform (CPU, uint8) and "
                    f"data.gpu_augment (flip + normalise on the device), but data.train_transform also has {lost}: "
                    "move them to data.uint8_transform (uint8 in and out) or set data.train_transform=null"
                )
            for t in getattr(self.train_transform, "transforms", []):
                if type(t).__name__ == "HorizontalFlip" and abs(float(t.p) - self.gpu_augment.flip_p) > 1e-9:
                    raise ValueError(
                        f"data.train_transform flips with p={t.p} but "
                        f"data.gpu_augment.flip_p={self.gpu_augment.flip_p}; "
                        "make them equal so data.uint8_batches does not change the augmentation"
                    )
        norm = find_normalize(self.eval_transform)
        if norm is not None:
            mean, std, max_value = norm
            ga = self.gpu_augment
            if not (
                np.allclose(mean, ga.mean, atol=1e-6)
                and np.allclose(std, ga.std, atol=1e-6)
                and abs(max_value - ga.max_pixel_value) < 1e-6
            ):
                raise ValueError(
                    f"data.gpu_augment normalises with mean={list(ga.mean)}, std={list(ga.std)} but "
                    f"data.eval_transform with mean={list(mean)}, std={list(std)} (max_pixel_value {max_value}); "
                    "training and evaluation images must be normalised alike"
                )

    # -------------------------------------------------------------------------------------------------------------
    # Building the training index
    # -------------------------------------------------------------------------------------------------------------

    def _item_transform(self) -> Transform | None:
        return Uint8CHW(self.uint8_transform) if self.uint8_batches else self.train_transform

    def _build(self) -> None:
        if self._built:
            return
        if self.source is not None:
            self.source.ensure()
        if self.dataset_factory is None:
            self._build_folders()
        else:
            self._build_plugin()
        self._built = True
        log.info(
            "training data %s: %d identities, %d images%s",
            self.train_root,
            self._num_classes,
            len(self._labels),
            f" ({self._summary['label_noise']['num_corrupted']} with {self.label_noise.kind} label noise)"
            if self.label_noise.active
            else "",
        )
        if self.output_dir is not None:
            self._write_records(self.output_dir)

    def _exclude(self, classes: list[str], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Apply ``exclude_identities``; returns ``(kept indices, new labels, remaining classes)``."""
        assert self.exclusion_list is not None
        ex = exclude_identities(classes, labels, self.exclusion_list.identities)
        self._summary["exclude_identities"] = {
            "list": self.exclusion_list.spec,
            "file": str(self.exclusion_list.path),
            "listed": len(self.exclusion_list.identities),
            "removed": [{"identity": name, "images": n} for name, n in ex.removed],
            "not_in_data": ex.not_found,
            "images_removed": int(sum(n for _, n in ex.removed)),
        }
        log.info(
            "data.exclude_identities=%s: removed %d identities (%d images); %d listed ids are not in the data",
            self.exclusion_list.spec,
            len(ex.removed),
            self._summary["exclude_identities"]["images_removed"],
            len(ex.not_found),
        )
        return ex.keep, ex.labels, ex.classes

    def _build_folders(self) -> None:
        classes, paths, labels = scan_identity_folders(self.train_root)
        self._summary = {
            "source": {"kind": "identity_folders", "train_root": str(self.train_root)},
            "scanned": {"identities": len(classes), "images": len(paths)},
            "exclude_identities": None,
        }
        if self.exclusion_list is not None:
            keep, labels, classes = self._exclude(classes, labels)
            paths = paths[keep]

        started = time.perf_counter()
        bad = find_bad_images(paths, self.verify_images)
        seconds = time.perf_counter() - started
        emptied: list[str] = []
        if bad and self.on_bad_image == "error":
            i, reason = bad[0]
            raise OSError(
                f"{len(bad)} unreadable training image(s) under {self.train_root} (data.verify_images="
                f"{self.verify_images}); first: {paths[i]}: {reason}. Fix or remove them, or set "
                "data.on_bad_image=skip to skip them and list them in the run directory"
            )
        if bad:
            mask = np.ones(len(paths), dtype=bool)
            mask[[i for i, _ in bad]] = False
            self._bad = [(str(paths[i]), reason) for i, reason in bad]
            paths = paths[mask]
            classes, labels, emptied = drop_empty_classes(classes, labels[mask])
            log.warning(
                "data.on_bad_image=skip: skipped %d unreadable training image(s)%s; listed in %s",
                len(bad),
                f" ({len(emptied)} identities left without images: {emptied[:5]})" if emptied else "",
                BAD_IMAGES_FILE if self.output_dir is not None else "the run directory",
            )
        self._summary["bad_images"] = {
            "check": self.verify_images,
            "policy": self.on_bad_image,
            "seconds": round(seconds, 3),
            "count": len(bad),
            "identities_emptied": emptied,
            "file": BAD_IMAGES_FILE if bad else None,
        }
        labels, image_index, record = self._apply_noise(labels, len(classes))
        self._classes, self._paths, self._labels = classes, paths, labels
        self._train_paths = paths[image_index] if record.donor_indices is not None else paths
        self._num_classes = len(classes)

    def _build_plugin(self) -> None:
        assert self.dataset_factory is not None
        base = self.dataset_factory(transform=self._item_transform())
        if hasattr(base, "worker_buffers"):  # a dataset with the batched uint8 fetch (RecordIOFaces)
            base.worker_buffers = self.worker_buffers
        labels = np.asarray(base.labels)
        if labels.ndim != 1 or len(labels) != len(base) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"data.dataset {type(base).__name__}: .labels must be a 1-D int array with one label per sample, "
                f"got {labels.dtype} of shape {labels.shape} for {len(base)} samples"
            )
        labels = labels.astype(np.int64, copy=False)
        classes = getattr(base, "classes", None)
        num_classes = int(base.num_classes)
        index = np.arange(len(labels), dtype=np.int64)
        self._summary = {
            "source": {"kind": type(base).__name__, "train_root": str(self.train_root)},
            "scanned": {"identities": num_classes, "images": len(labels)},
            "exclude_identities": None,
            "bad_images": {"check": "none (plug-in dataset)", "policy": self.on_bad_image, "count": 0},
        }
        if self.verify_images != "none":
            log.info("data.verify_images=%s applies to image folders; %s checks its own records", self.verify_images,
                     type(base).__name__)  # fmt: skip
        if self.exclusion_list is not None:
            if classes is None:
                raise ValueError(
                    f"data.exclude_identities={self.exclusion_list.spec!r} needs identity names, but data.dataset "
                    f"{type(base).__name__} has no .classes (RecordIO packs store numeric labels only): remove the "
                    "identities before packing (e.g. from identity folders with data.exclude_identities, then pack)"
                )
            keep, labels, classes = self._exclude(list(classes), labels)
            index = index[keep]
            num_classes = len(classes)
        labels, image_index, _ = self._apply_noise(labels, num_classes)
        index = index[image_index]
        self._plugin_base = base
        self._plugin_index = index
        self._classes = None if classes is None else list(classes)
        self._labels = labels
        self._num_classes = num_classes

    def _apply_noise(self, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray, NoiseRecord]:
        new_labels, image_index, record = apply_label_noise(labels, self.label_noise, num_classes)
        self._noise = record if self.label_noise.active else None
        self._summary["label_noise"] = {
            "kind": self.label_noise.kind,
            "rate": self.label_noise.rate,
            "seed": self.label_noise.seed,
            "num_corrupted": len(record),
            "file": NOISE_FILE if self.label_noise.active else None,
        }
        return new_labels, image_index, record

    # -------------------------------------------------------------------------------------------------------------
    # Run-directory records
    # -------------------------------------------------------------------------------------------------------------

    def _write_records(self, directory: Path) -> None:
        """Write ``data_exclusions.json`` (+ ``label_noise.csv``, ``bad_images.txt``) on global rank 0."""
        self._records_dir = Path(directory)
        if getattr(rank_zero_only, "rank", 0) != 0:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        summary = {**self._summary, "num_classes": self._num_classes, "num_images": len(self._labels)}
        write_json_atomic(directory / EXCLUSIONS_FILE, summary)
        if self._noise is not None:
            write_noise_csv(directory / NOISE_FILE, self._noise, self._paths)
        if self._bad:
            with atomic_write(directory / BAD_IMAGES_FILE, "w") as f:
                f.write(
                    f"# {len(self._bad)} training images skipped (data.verify_images={self.verify_images}, "
                    "data.on_bad_image=skip): path<TAB>reason\n" + "".join(f"{p}\t{r}\n" for p, r in self._bad)
                )
        log.info("data records written to %s", directory)

    # -------------------------------------------------------------------------------------------------------------
    # LightningDataModule API
    # -------------------------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Number of training identities after exclusions (scans the data on first use)."""
        self._build()
        return self._num_classes

    @property
    def num_images(self) -> int:
        self._build()
        return len(self._labels)

    @property
    def classes(self) -> list[str] | None:
        """Identity names of labels ``0 .. num_classes-1`` (None for a plug-in dataset without names)."""
        self._build()
        return self._classes

    @property
    def noise_record(self) -> NoiseRecord | None:
        """The corrupted samples when ``label_noise`` is active, else None."""
        self._build()
        return self._noise

    @property
    def bad_images(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of images skipped at start-up."""
        self._build()
        return list(self._bad)

    def prepare_data(self) -> None:
        if self.source is not None:
            self.source.ensure()

    def setup(self, stage: str | None = None) -> None:
        self._build()
        if self._records_dir is None and self.trainer is not None:
            self._write_records(Path(self.trainer.default_root_dir))
        if len(self._labels) < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} exceeds the {len(self._labels)} training images "
                f"in {self.train_root}"
            )
        if self._plugin_base is not None:
            assert self._plugin_index is not None
            untouched = np.array_equal(self._plugin_index, np.arange(len(self._plugin_base))) and np.array_equal(
                self._labels, np.asarray(self._plugin_base.labels)
            )
            self.train_set = (
                self._plugin_base if untouched else IndexedDataset(self._plugin_base, self._plugin_index, self._labels)
            )
            return
        assert self._train_paths is not None
        bad_log = None if self._records_dir is None else self._records_dir / BAD_IMAGES_FILE
        self.train_set = LabelledImages(
            self._train_paths, self._labels, self._item_transform(), self.on_bad_image, bad_log, self.worker_buffers
        )

    def _train_sampler(self) -> ResumableSampler:
        """One sampler per run (Lightning may ask for the loader more than once), sharded over the DDP ranks."""
        if self._sampler is None:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
            self._sampler = ResumableSampler(len(self.train_set), seed=self.seed, rank=rank, world_size=world)
        if self._pending_state is not None:
            self._sampler.load_state_dict(self._pending_state)
            self._pending_state = None
        return self._sampler

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            EpochSeeded(self.train_set, self.seed),
            sampler=self._train_sampler(),
            batch_size=self.batch_size,
            drop_last=True,  # a last batch of one would break BatchNorm
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            # With uint8_batches, LabelledImages.__getitems__ returns batches already collated; this passes them on.
            collate_fn=collate_batch,
            # Its own generator: creating the iterator (e.g. on resume) then draws nothing from the global RNG.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def state_dict(self) -> dict[str, int]:
        """The sample position, saved by Lightning in every checkpoint (plain ints)."""
        if self._sampler is None or self.trainer is None:
            return {}
        # Batches the training loop has processed in this epoch (what the DataLoader yielded is one ahead: Lightning
        # prefetches a batch to detect the epoch's end).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return self._sampler.state_dict(consumed_batches=done, batch_size=self.batch_size)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Continues the checkpointed epoch where it stopped (applied when the training loader is built)."""
        if state_dict:
            self._pending_state = dict(state_dict)
            if self._sampler is not None:
                self._train_sampler()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``uint8_batches``: flip + normalise the uint8 images on the device they were moved to.

        Lightning calls the DataModule's hook when the LightningModule does not override it (``_DataHookSelector``),
        so the module's ``training_step`` receives the same float batch it would get from the CPU pipeline.
        """
        if not self.uint8_batches or not isinstance(batch, list | tuple) or not isinstance(batch[0], torch.Tensor):
            return batch
        images = batch[0]
        if images.dtype != torch.uint8:
            return batch
        training = self.trainer is None or bool(self.trainer.training)
        return [self.gpu_augment(images, train=training), *batch[1:]]
