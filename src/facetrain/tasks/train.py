"""The training task: build everything from the composed config, fit, evaluate, write metrics.json."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from facetrain.callbacks.evaluation import Evaluation
from facetrain.callbacks.preemption import Preemption
from facetrain.classifier.config import check_classifier_head
from facetrain.data.world import check_datasets
from facetrain.inference.callback import ContractCallback
from facetrain.models.finetune import INIT_RECORD_FILE
from facetrain.training.checkpoint import find_last_checkpoint, safe_load
from facetrain.utils.instantiate import instantiate, instantiate_named
from facetrain.utils.io import ensure_writable_dir, write_json_atomic
from facetrain.utils.schema import validate_config

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and evaluate one run described by ``cfg`` (``configs/train.yaml`` composed by Hydra).

    Everything that can be wrong with the inputs (output directory, data root, pairs files, model name, head
    arguments) is checked while the objects are built, before the first training step; config keys and values, a mix
    of synthetic and real datasets and a missing real dataset before any data is read.

    Returns:
        The final metrics, also written to ``<output_dir>/metrics.json``.
    """
    validate_config(cfg)  # keys and ranges, before any data is read or generated
    check_classifier_head(cfg.get("classifier"), cfg.get("loss"), cfg.get("optimizer"))  # e.g. loss=softmax
    check_datasets(cfg)  # one world (synthetic or real) for training and evaluation; real datasets where said
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    output_dir = ensure_writable_dir(cfg.paths.output_dir, "paths.output_dir")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg, output_dir)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # generates if needed, scans, checks, applies noise, writes the records: once
    num_classes = datamodule.num_classes  # the head needs it before the model is built
    evaluators = instantiate_named(cfg.get("eval"))
    model = instantiate(cfg.model, num_classes=num_classes)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    if getattr(model, "init_record", None):  # model.init_from: what was loaded from where, next to the run
        write_json_atomic(Path(output_dir) / INIT_RECORD_FILE, model.init_record)
    # The contract callback is not optional: every checkpoint must say how to feed the model (inference/contract.py).
    callbacks = instantiate_named(cfg.get("callbacks")) + evaluators + [ContractCallback()]
    loggers = instantiate_named(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    log.info("training %s on %d identities (%d images)", type(model.head).__name__, num_classes, datamodule.num_images)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        preempted = next((c.saved for c in callbacks if isinstance(c, Preemption) and c.saved), None)
        if preempted is None:
            raise
        log.error("%s", preempted)
        raise SystemExit(143) from None  # 128 + SIGTERM, as if the signal had ended the process

    metrics = collect_metrics(trainer, evaluators, num_classes)
    if trainer.is_global_zero:
        path = write_json_atomic(Path(output_dir) / "metrics.json", metrics)
        log.info("metrics written to %s", path)
    return metrics


def _task_overrides() -> list[str] | None:
    """This run's command-line overrides, or None outside a Hydra run (tests that call :func:`train` directly)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        # Unresolved, as written on the command line and in .hydra/overrides.yaml (an override may hold ${...}).
        return [str(o) for o in OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)]
    except ValueError:  # HydraConfig was not set
        return None


def resolve_ckpt_path(ckpt_path: str | None, cfg: DictConfig, output_dir: str | Path) -> str | None:
    """Checks a checkpoint before any data is read; ``last`` becomes the newest good one of the same experiment.

    ``last`` searches ``<paths.log_dir>/<task_name>`` for earlier runs with the same overrides (ignoring
    ``ckpt_path``), newest checkpoint first, skipping truncated or unsafe files; with none found the run starts from
    scratch (the first submission of a requeued job). An explicit path must exist and load with weights only.
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        found = find_last_checkpoint(Path(cfg.paths.log_dir) / str(cfg.task_name), _task_overrides(), output_dir)
        if found is None:
            log.warning("ckpt_path=last: no earlier checkpoint of this experiment; starting from scratch")
            return None
        log.info("ckpt_path=last: resuming from %s", found)
        return str(found)
    safe_load(ckpt_path)  # missing, truncated or unsafe: a clear error now rather than after the data scan
    return str(ckpt_path)


def collect_metrics(trainer: pl.Trainer, evaluators: list[Evaluation], num_classes: int) -> dict[str, Any]:
    """Flat final metrics: every evaluation set's results plus the last training scalars."""
    metrics: dict[str, Any] = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
    metrics["num_classes"] = num_classes
    for key, value in trainer.callback_metrics.items():
        if key.startswith("train/"):
            metrics[key] = float(value)
    for evaluator in evaluators:
        metrics.update(evaluator.results)
    return metrics


def check_optimized_metric(name: str | None, evals: DictConfig | None) -> None:
    """Refuses, before any data is read, an ``optimized_metric`` whose set is not evaluated by this run.

    Metric names are ``<set>/<key>`` (``lfw/acc``) or ``train/<key>``; without this check a run with ``eval=[ijbc]``
    would train to the end and only then fail to find the default ``lfw/acc``. ``train.py`` calls it before
    :func:`train` (only the Hydra entry point returns the metric).
    """
    if not name:
        return
    prefix = str(name).split("/", 1)[0]
    sets = sorted(evals or {})
    if prefix != "train" and prefix not in sets:
        example = f"{sets[0]}/<metric>" if sets else "train/loss"
        raise ValueError(
            f"optimized_metric={name!r} names the set {prefix!r}, which this run does not evaluate (eval={sets}): set "
            f"optimized_metric={example} or optimized_metric=null"
        )


def get_metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The value a Hydra sweeper optimises (``optimized_metric``), with a clear error when it is missing."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric={name!r} is not among the run's metrics: {sorted(metrics)}")
    value = metrics[name]
    if isinstance(value, bool) or not isinstance(value, int | float):  # "undefined" (with a reason) is not a score
        reason = metrics.get(f"{name}_reason", "no reason recorded")
        raise ValueError(f"optimized_metric={name!r} is {value!r} for this run ({reason}); a sweeper needs a number")
    return float(value)
