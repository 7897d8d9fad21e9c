"""The ``eval/`` config entries: one :class:`~facetrain.callbacks.evaluation.Evaluation` per on-disk format.

Each entry is only the flat, documented config surface of one format (``eval.lfw.root``, ``eval.lfw.score``,
``eval.ytf.aggregate``, ...). It declares two things, its set loader (``facetrain.evaluation.sets``) and its protocol
class (``facetrain.evaluation.protocols``), and :class:`SetEvaluation` does the rest: its keys are the loader's
parameters, the protocol's and :class:`~facetrain.callbacks.evaluation.Evaluation`'s, each with the default where it
is defined, so no option is declared twice. The protocol is built first (its options checked before any file is
read), then the loader is handed to the one callback. A new set on a new format is one more entry here (or no class
at all: ``_target_: facetrain.callbacks.evaluation.Evaluation`` with a ``set`` node, a loader with
``_partial_: true``, and a ``protocol`` node).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from facetrain.callbacks.evaluation import Evaluation
from facetrain.evaluation import sets, sets_ijb
from facetrain.evaluation.protocols import OpenSetProtocol, PairProtocol, Protocol, VideoPairProtocol
from facetrain.evaluation.protocols_ijb import IjbProtocol, TinyFaceProtocol
from facetrain.evaluation.sets import EvaluationSet, IdentificationSet

__all__ = [
    "BinVerification",
    "IjbEvaluation",
    "OpenSetIdentification",
    "PairVerification",
    "SetEvaluation",
    "TinyFaceIdentification",
    "VideoBinVerification",
    "VideoVerification",
    "open_set_trials",
]

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _parameters(target: Callable[..., Any], skip: Iterable[str]) -> list[inspect.Parameter]:
    """The named parameters of a function, or of a class's ``__init__`` following ``**kwargs`` up the MRO."""
    callables: list[Any] = [target]
    if inspect.isclass(target):
        callables = [c.__init__ for c in target.__mro__ if "__init__" in vars(c) and c is not object]
    found: dict[str, inspect.Parameter] = {}
    skipped = {"self", *skip}
    for fn in callables:
        params = inspect.signature(fn).parameters.values()
        for p in params:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in found and p.name not in skipped:
                found[p.name] = p.replace(kind=_KEYWORD)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(found.values())


class SetEvaluation(Evaluation):
    """An ``eval/`` entry: flat keys shared out to a set loader, a protocol and the evaluation callback.

    A subclass declares ``load`` (the set loader; its ``name`` parameter receives the entry's name) and
    ``protocol_type``; ``from_protocol`` names loader parameters the protocol decides (YTF's ``first_k`` follows the
    ``aggregate``). Its signature, the keys the config validation accepts, is built from those when the subclass is
    defined; a key claimed twice is a ``TypeError`` there.
    """

    load: ClassVar[Callable[..., EvaluationSet]]
    protocol_type: ClassVar[type[Protocol]]
    from_protocol: ClassVar[tuple[str, ...]] = ()
    _keys: ClassVar[dict[str, tuple[str, ...]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        groups = {
            "set": _parameters(cls.load, skip=("name", *cls.from_protocol)),
            "protocol": _parameters(cls.protocol_type, skip=("name",)),
            "evaluation": _parameters(Evaluation, skip=("name", "set", "protocol")),
        }
        seen: dict[str, str] = {}
        for group, params in groups.items():
            for p in params:
                if p.name in seen:
                    raise TypeError(f"{cls.__name__}: key {p.name!r} belongs to both the {seen[p.name]} and {group}")
                seen[p.name] = group
        cls._keys = {group: tuple(p.name for p in params) for group, params in groups.items()}
        # The protocol's declared rules (facetrain.utils.rules) are this entry's too: validate_config refuses a bad
        # eval.<name>.fars before any file is read, with the rule text the protocol's constructor uses.
        cls.config_constraints = dict(getattr(cls.protocol_type, "config_constraints", {}))

        def __init__(self: SetEvaluation, name: str, **options: Any) -> None:
            self._build(name, options)

        positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
        head = [inspect.Parameter("self", positional), inspect.Parameter("name", positional, annotation="str")]
        __init__.__signature__ = inspect.Signature(head + [p for ps in groups.values() for p in ps])  # type: ignore[attr-defined]
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__  # type: ignore[method-assign]

    def _build(self, name: str, options: dict[str, Any]) -> None:
        cls = type(self)
        try:  # unknown and missing keys, named as the config writes them
            inspect.signature(cls.__init__).bind(self, name, **options)
        except TypeError as error:
            raise TypeError(f"eval.{name} ({cls.__name__}): {error}") from None
        given = {group: {k: options[k] for k in keys if k in options} for group, keys in cls._keys.items()}
        protocol = cls.protocol_type(**given["protocol"], name=name)
        derived = {key: getattr(protocol, key) for key in cls.from_protocol}
        loader = partial(cls.load, **given["set"], **derived, name=name)
        Evaluation.__init__(self, name, loader, protocol, **given["evaluation"])


def open_set_trials(
    root: str,
    blufr_dir: str | None = None,
    trials: int = 10,
    seed: int = 0,
    impostor_fraction: float = 0.5,
    name: str = "openset",
) -> IdentificationSet:
    """BLUFR's lists (:func:`~facetrain.evaluation.sets.blufr_lists`) when ``blufr_dir`` is given, else ``trials``
    generic seeded trials over identity folders (:func:`~facetrain.evaluation.sets.identity_folders`)."""
    if blufr_dir is not None:
        return sets.blufr_lists(root, blufr_dir, name=name)
    return sets.identity_folders(root, trials, seed, impostor_fraction, name=name)


class PairVerification(SetEvaluation):
    """LFW View-2 pair verification: images ``<root>/<Name>/<Name>_<NNNN>.<ext>`` and ``pairs.txt``
    (:func:`~facetrain.evaluation.sets.lfw_pairs`), scored by :class:`~facetrain.evaluation.protocols.PairProtocol`."""

    load = sets.lfw_pairs
    protocol_type = PairProtocol


class BinVerification(SetEvaluation):
    """Pair verification on an InsightFace ``.bin`` pack (:func:`~facetrain.evaluation.sets.insightface_bin`), scored
    by :class:`~facetrain.evaluation.protocols.PairProtocol`."""

    load = sets.insightface_bin
    protocol_type = PairProtocol


class VideoVerification(SetEvaluation):
    """YouTube Faces video-pair verification on frame folders (:func:`~facetrain.evaluation.sets.ytf_folders`),
    scored by :class:`~facetrain.evaluation.protocols.VideoPairProtocol`."""

    load = sets.ytf_folders
    protocol_type = VideoPairProtocol
    from_protocol = ("first_k",)


class VideoBinVerification(SetEvaluation):
    """Video-pair verification on a video ``.bin`` pack (:func:`~facetrain.evaluation.sets.ytf_bin`), scored by
    :class:`~facetrain.evaluation.protocols.VideoPairProtocol`; the scores equal :class:`VideoVerification` on the
    frame folders the pack was written from."""

    load = sets.ytf_bin
    protocol_type = VideoPairProtocol
    from_protocol = ("first_k",)


class OpenSetIdentification(SetEvaluation):
    """Open-set identification over trials (:func:`open_set_trials`: BLUFR or generic), scored by
    :class:`~facetrain.evaluation.protocols.OpenSetProtocol`."""

    load = open_set_trials
    protocol_type = OpenSetProtocol


class IjbEvaluation(SetEvaluation):
    """IJB-B / IJB-C in InsightFace's packaging, loose crops aligned from their landmarks
    (:func:`~facetrain.evaluation.sets_ijb.ijb`), scored by :class:`~facetrain.evaluation.protocols_ijb.IjbProtocol`."""

    load = sets_ijb.ijb
    protocol_type = IjbProtocol


class TinyFaceIdentification(SetEvaluation):
    """TinyFace closed-set identification, images resized to 112×112 (:func:`~facetrain.evaluation.sets_ijb.tinyface`),
    scored by :class:`~facetrain.evaluation.protocols_ijb.TinyFaceProtocol`."""

    load = sets_ijb.tinyface
    protocol_type = TinyFaceProtocol
