"""Writes the preprocessing contract into every checkpoint, with the thresholds of the evaluation just run."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from facetrain.callbacks.evaluation import Evaluation
from facetrain.evaluation.protocols import PairProtocol
from facetrain.evaluation.sets import VideoPairSet
from facetrain.inference.contract import CONTRACT_KEY, contract_from_config, verification_thresholds


def image_verification_sets(callbacks: list[Any]) -> list[Evaluation]:
    """The image-pair verification callbacks (not video sets: their scores compare aggregated videos), LFW first."""
    sets = [
        c
        for c in callbacks
        if isinstance(c, Evaluation) and isinstance(c.protocol, PairProtocol) and not isinstance(c.set, VideoPairSet)
    ]
    return sorted(sets, key=lambda c: c.name != "lfw")


def thresholds_of(evaluator: Evaluation) -> dict[str, Any] | None:
    """:func:`verification_thresholds` of the evaluator's last evaluation, or None before the first one."""
    report = evaluator.report
    if report is None or "fpr" not in report:
        return None
    issame = report["issame"]
    return verification_thresholds(
        evaluator.name,
        evaluator.protocol.score,
        evaluator.protocol.mean_subtraction,
        report.values.get("acc"),
        report.values.get("threshold"),
        report["fpr"],
        report["thresholds"],
        n_impostors=int((~issame).sum()),
    )


class ContractCallback(pl.Callback):
    """Stores :class:`~facetrain.inference.contract.Contract` as plain data under ``facetrain_contract``.

    Lightning runs checkpoint callbacks after the others at epoch end, so when a checkpoint is written the
    evaluation callbacks already hold this epoch's results: the stored thresholds belong to the stored weights.
    """

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        run_config = getattr(pl_module, "run_config", None)
        if run_config is None:
            return
        sets = image_verification_sets(trainer.callbacks)
        thresholds = next((t for t in map(thresholds_of, sets) if t is not None), None)
        contract = contract_from_config(run_config, thresholds)
        provenance = {"epoch": trainer.current_epoch, "global_step": trainer.global_step}
        checkpoint[CONTRACT_KEY] = contract.replace(model={**contract.model, **provenance}).to_dict()
