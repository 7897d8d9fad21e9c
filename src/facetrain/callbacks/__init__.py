"""Every Lightning callback of facetrain, one module per family.

* :mod:`~facetrain.callbacks.evaluation`: :class:`Evaluation`, one (evaluation set, protocol) pair on its schedule;
  :mod:`~facetrain.callbacks.eval_sets`: the ``eval/`` config entries built on it (``PairVerification``, ...).
* :mod:`~facetrain.callbacks.head_curves`: the head's target-logit curve and the per-epoch angle histograms.
* :mod:`~facetrain.callbacks.preemption`: a checkpoint on SIGTERM / Ctrl+C.
* :mod:`~facetrain.callbacks.progress`: the training loss in the progress bar without a per-step device read.
* :mod:`~facetrain.callbacks.host_reads`: host reads per training step (tests and benchmarks).
* :mod:`~facetrain.callbacks.tensorboard`: the TensorBoard writers among a trainer's loggers.

What the callbacks compute lives outside Lightning: sets, protocols and metrics in ``facetrain.evaluation`` (arrays
in, report out), checkpoint IO in ``facetrain.training.checkpoint``. Two callbacks stay with the package they serve:
``facetrain.inference.callback.ContractCallback`` (the preprocessing contract in every checkpoint) and
``facetrain.classifier.ddp.AllReduceBytesCallback`` (a measurement of the classifier's collectives).
"""
