"""The training DataModule: one pipeline from a :class:`~facetrain.data.dataset.FaceDataset` to the training set.

The dataset is CASIA-WebFace style identity folders (:class:`~facetrain.data.image_files.IdentityFolders`, the
default) or a plug-in dataset such as a RecordIO pack (``data.dataset``); both declare the same interface, so the
steps below are the same for every dataset. What it does before the first step, in this order
(docs/protocols.md §6: remove test-set overlap before injecting noise):

1. build the dataset (generating the synthetic data first when ``source`` says so);
2. drop the identities of ``exclude_identities`` (LFW overlap, :mod:`facetrain.data.overlap`);
3. check every sample (``verify_images``; image files only) and stop, or skip and record, per ``on_bad_image``;
4. apply ``label_noise`` (:mod:`facetrain.data.noise`) to the training labels only;
5. write what it did to the run directory: ``data_exclusions.json`` always, ``label_noise.csv`` and
   ``bad_images.txt`` when they apply.

All of it runs once, from :meth:`FaceDataModule.setup` (the train task calls it before building the model, which
needs :attr:`~FaceDataModule.num_classes`; Lightning's own call is then a no-op), so every data problem surfaces
before any expensive work. Every DDP rank runs the same deterministic steps and ends with identical labels; the
records are written by global rank 0 only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from facetrain.data.batches import collate_batch
from facetrain.data.checks import ON_BAD_IMAGE, VERIFY_IMAGES
from facetrain.data.dataset import FaceDataset
from facetrain.data.image_files import IdentityFolders
from facetrain.data.noise import LabelNoiseConfig, NoiseRecord
from facetrain.data.overlap import IdentityList, load_identity_list
from facetrain.data.pipeline import BAD_IMAGES_FILE, TrainingData, build_training_data, write_records
from facetrain.data.sampler import EpochSeeded, ResumableSampler
from facetrain.data.shared_batches import DEFAULT_SLOTS
from facetrain.data.transforms import GpuAugment, Transform, Uint8CHW, find_normalize
from facetrain.utils.rules import Constraint, Interval, OneOf, check_args

log = logging.getLogger(__name__)

# What data.uint8_batches replaces: flip and normalisation move to the device, ToTensorV2 to Uint8CHW.
_UINT8_REPLACES = {"HorizontalFlip", "Normalize", "ToTensorV2"}


class DataSource(Protocol):
    """Something that makes a dataset exist on disk before it is read (e.g. the synthetic generator)."""

    def ensure(self) -> object: ...


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
            returning a :class:`~facetrain.data.dataset.FaceDataset`; None (default) reads identity folders
            under ``train_root`` (:class:`~facetrain.data.image_files.IdentityFolders`).
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
            of its arguments); its mean/std must equal ``normalize``.
        seed: Seed of the sample order and of every sample's augmentation (:mod:`facetrain.data.sampler`): epoch e's
            order and each image's flips depend only on ``(seed, e, index)``, and the position inside the epoch is
            saved in checkpoints, so a resumed run continues the exact sequence (no sample repeated or skipped).
        normalize: ``{mean, std}`` in [0, 1] units: the one declaration of the pixel normalisation that the
            transforms and ``gpu_augment`` reference (``${data.normalize.mean}``); a transform that normalises
            otherwise is refused. None: the evaluation transform's ``Normalize`` is the reference.
    """

    #: Valid values, checked per config key before the data is read (facetrain.utils.rules).
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
        dataset: Callable[..., FaceDataset] | None = None,
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
        normalize: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        check_args(self, locals(), prefix="data")
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
        self.normalize = None if normalize is None else {k: tuple(map(float, normalize[k])) for k in ("mean", "std")}
        self._check_normalisation()
        if self.uint8_batches:
            self._check_uint8_setup()

        self.seed = int(seed)
        self._sampler: ResumableSampler | None = None
        self._pending_state: dict[str, int] | None = None
        self.train_set: FaceDataset | None = None  # the dataset after the pipeline (set by setup)
        self._data: TrainingData | None = None
        self._records_dir: Path | None = None

    # -------------------------------------------------------------------------------------------------------------
    # Validation
    # -------------------------------------------------------------------------------------------------------------

    def _check_normalisation(self) -> None:
        """Every normalisation the run applies equals ``data.normalize``, declared once in the config.

        Training and evaluation images must be normalised alike: a ``Normalize`` in ``data.train_transform`` or
        ``data.eval_transform`` (or ``data.gpu_augment`` under ``uint8_batches``) that differs is refused, naming it.
        Without ``data.normalize`` the evaluation transform is the reference.
        """
        found = {key: find_normalize(getattr(self, key)) for key in ("train_transform", "eval_transform")}
        if self.uint8_batches:
            found["gpu_augment"] = (self.gpu_augment.mean, self.gpu_augment.std, self.gpu_augment.max_pixel_value)
        if self.normalize is not None:
            ref_key, ref = "normalize", (self.normalize["mean"], self.normalize["std"], 255.0)
        else:
            ref_key, ref = "eval_transform", found.pop("eval_transform")
        if ref is None:
            return
        for key, norm in found.items():
            if norm is not None and not all(np.allclose(a, b, atol=1e-6) for a, b in zip(norm, ref, strict=True)):
                raise ValueError(
                    f"data.{key} normalises with mean={list(norm[0])}, std={list(norm[1])} (max_pixel_value "
                    f"{norm[2]:g}) but data.{ref_key} with mean={list(ref[0])}, std={list(ref[1])} (max_pixel_value "
                    f"{ref[2]:g}); training and evaluation images must be normalised alike: reference "
                    "${data.normalize.mean} / ${data.normalize.std} in every transform"
                )

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

    # -------------------------------------------------------------------------------------------------------------
    # Building the training index
    # -------------------------------------------------------------------------------------------------------------

    def _item_transform(self) -> Transform | None:
        return Uint8CHW(self.uint8_transform) if self.uint8_batches else self.train_transform

    def _records_directory(self) -> Path | None:
        """Where the records go: ``output_dir``, else the trainer's ``default_root_dir`` (None before a trainer)."""
        if self.output_dir is not None:
            return self.output_dir
        return None if self.trainer is None else Path(self.trainer.default_root_dir)

    def _make_dataset(self) -> FaceDataset:
        """``data.dataset(transform=...)``, or the identity folders under ``train_root``."""
        if self.dataset_factory is None:
            transform = self._item_transform()
            return IdentityFolders(self.train_root, transform, self.on_bad_image, worker_buffers=self.worker_buffers)
        dataset = self.dataset_factory(transform=self._item_transform())
        if not isinstance(dataset, FaceDataset):
            raise TypeError(
                f"data.dataset built a {type(dataset).__name__}, not a facetrain.data.dataset.FaceDataset: subclass it "
                "(labels, num_classes, __len__, __getitem__; the optional capabilities have defaults)"
            )
        dataset.worker_buffers = self.worker_buffers
        return dataset

    def _build(self) -> None:
        """dataset → exclusions → checks → label noise (:mod:`facetrain.data.pipeline`) → records, once."""
        if self._data is not None:
            return
        if self.source is not None:
            self.source.ensure()
        dataset = self._make_dataset()
        kind = "identity_folders" if isinstance(dataset, IdentityFolders) else type(dataset).__name__
        self._data = build_training_data(
            dataset, self.exclusion_list, self.verify_images, self.on_bad_image, self.label_noise, kind,
            str(self.train_root),
        )  # fmt: skip
        self.train_set = self._data.train_set
        log.info(
            "training data %s: %d identities, %d images%s",
            self.train_root,
            self._data.num_classes,
            len(self._data.labels),
            f" ({len(self._data.noise)} with {self.label_noise.kind} label noise)" if self._data.noise else "",
        )
        records = self._records_directory()
        if records is not None:
            self._write_records(records)

    def _write_records(self, directory: Path) -> None:
        """The records of the pipeline, on global rank 0 only (every rank built the same data)."""
        self._records_dir = Path(directory)
        assert self.train_set is not None
        # Every rank appends the images it skips at load time (one short O_APPEND write per line).
        self.train_set.bad_image_log = os.fspath(self._records_dir / BAD_IMAGES_FILE)
        if getattr(rank_zero_only, "rank", 0) == 0:
            write_records(directory, self._data, self.verify_images)

    # -------------------------------------------------------------------------------------------------------------
    # LightningDataModule API
    # -------------------------------------------------------------------------------------------------------------

    def _built_data(self, name: str) -> TrainingData:
        if self._data is None:
            raise RuntimeError(
                f"FaceDataModule.{name} is known once the training data is built: call datamodule.setup('fit') first "
                "(the train task does, before building the model)"
            )
        return self._data

    @property
    def num_classes(self) -> int:
        """Number of training identities after exclusions and skipped images (after :meth:`setup`)."""
        return self._built_data("num_classes").num_classes

    @property
    def num_images(self) -> int:
        """Number of training samples (after :meth:`setup`)."""
        return len(self._built_data("num_images").labels)

    @property
    def classes(self) -> list[str] | None:
        """Identity names of labels ``0 .. num_classes-1`` (None for a dataset without names; after :meth:`setup`)."""
        return self._built_data("classes").classes

    @property
    def noise_record(self) -> NoiseRecord | None:
        """The corrupted samples when ``label_noise`` is active, else None (after :meth:`setup`)."""
        return self._built_data("noise_record").noise

    @property
    def bad_images(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of images skipped at start-up (after :meth:`setup`)."""
        return list(self._built_data("bad_images").bad)

    def prepare_data(self) -> None:
        """Generate the data if a ``source`` makes it (Lightning calls this on one process per node)."""
        if self.source is not None:
            self.source.ensure()

    def setup(self, stage: str | None = None) -> None:
        """Build the training set once (dataset → exclusions → checks → label noise → records); later calls reuse it.

        Every rank runs the same deterministic steps, so all end with identical labels; ``source.ensure()`` is safe to
        call from every rank (the synthetic generator locks its directory).
        """
        self._build()
        if self._records_dir is None and self.trainer is not None:
            self._write_records(Path(self.trainer.default_root_dir))
        if self.num_images < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} exceeds the {self.num_images} training images in {self.train_root}"
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
            # With uint8_batches, the dataset's batched fetch returns batches already collated; this passes them on.
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
