"""One data world per run: every dataset synthetic, or every dataset real and where the config says.

``configs/world/`` (``synthetic`` | ``real``) says where each dataset is read from; the ``data=`` and ``eval=``
configs interpolate it, and the real-data presets (``data=casia_webface``, ``data=insightface_rec`` and the
experiments and paper tables built on them) select ``world=real``. Two checks run before any data is read or generated
(:func:`facetrain.tasks.train.train` and :func:`facetrain.tasks.evaluate.evaluate` call :func:`check_datasets`):

* **one world** (:func:`check_world`): a dataset's images are *synthetic* when they lie under ``synthetic.root`` or
  when their node has a generator (a non-null ``source``), *real* otherwise. A run that mixes them (real CASIA
  training with the synthetic LFW pairs, or the reverse) would report, and pick its best checkpoint by, numbers of
  the other world; it is refused unless ``allow_mixed_data=true``. Protocol files (pairs, splits, BLUFR lists) take
  the world of the images they list.
* **real data present** (:func:`check_real_data_present`): every real location must exist. A missing one is named with
  its config key, the ``paths.*`` key to set and the data/README.md section that explains how to get and prepare it,
  before the training data is scanned. The readers keep their own checks for the Python API (as
  :mod:`facetrain.utils.schema` and the constructors do for values).

The checks work on plain data: :func:`dataset_tree` resolves only the keys they read from the composed config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from facetrain.utils.rules import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "LOCATION_KEYS",
    "README",
    "README_SECTIONS",
    "Location",
    "check_datasets",
    "check_no_null_locations",
    "check_real_data_present",
    "check_world",
    "dataset_tree",
    "locations",
]

#: Keys of a ``data`` or ``eval.<name>`` node that name a dataset on disk (the readers' argument names): the images
#: (folders or packs) and the protocol files that list pairs or trials of those images.
DATA_KEYS = ("train_root", "root", "path")
PROTOCOL_KEYS = ("pairs_file", "splits_file", "blufr_dir")
LOCATION_KEYS = DATA_KEYS + PROTOCOL_KEYS
#: A node's generator (``SyntheticFaces``): its data is synthetic wherever it is written.
SOURCE_KEY = "source"
#: A location may also be a file prefix: a RecordIO pack given as ``<dir>/train`` (facetrain.data.recordio.pack_paths).
PREFIX_SUFFIXES = (".rec", ".idx")
#: Sections of the config that hold datasets: the training data and the evaluation sets.
SECTIONS = ("data", "eval")

README = "data/README.md"
#: The data/README.md section for each real dataset location of ``configs/paths`` (the key a user overrides); a unit
#: test keeps this table, the keys of configs/paths/default.yaml and the headings of data/README.md in agreement.
README_SECTIONS = {
    "casia_webface": "CASIA-WebFace",
    "faces_webface": "InsightFace packs",
    "lfw": "LFW",
    "ytf": "YouTube Faces",
    "bin": "Verification packs",
    "blufr": "BLUFR",
    "ijbb": "IJB-B and IJB-C",
    "ijbc": "IJB-B and IJB-C",
    "tinyface": "TinyFace",
}
#: The section for a location outside every ``paths.*`` dataset folder (set directly, e.g. ``eval.lfw.root=...``).
LAYOUT_SECTION = "Layout"

_SHOWN = 4  # keys listed per world in the mixed-data message; the rest are counted


@dataclass(frozen=True)
class Location:
    """One dataset reference of the config.

    Attributes:
        key: Dotted config key (``data.train_root``, ``eval.lfw.pairs_file``, ``eval.ytf.source``).
        value: The path, or ``"<generator>"`` for a non-null ``source``.
        synthetic: Images under ``synthetic.root``, or a generator; a protocol file takes its node's world.
        generated: A ``source`` entry (no file to check).
    """

    key: str
    value: str
    synthetic: bool
    generated: bool = False

    def __str__(self) -> str:
        return f"{self.key}={self.value!r}" if not self.generated else f"{self.key}=<generator>"


def _real_path(path: str) -> str:
    """Absolute, normalised, symlinks resolved (a path need not exist)."""
    return os.path.realpath(os.path.expanduser(path))


def _is_under(path: str, root: str | None) -> bool:
    if not root:
        return False
    path, root = _real_path(path), _real_path(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _nodes(tree: Mapping[str, Any], sections: Iterable[str]) -> Iterable[tuple[str, Mapping[str, Any]]]:
    """``(dotted key, node)`` for the training data node and each evaluation set.

    A section holding a location or ``source`` key is one dataset node (``data``); otherwise it maps names to nodes
    (``eval``), so the walk needs no list of set names.
    """
    for section in sections:
        node = tree.get(section)
        if not isinstance(node, Mapping):
            continue
        if any(k in node for k in (*LOCATION_KEYS, SOURCE_KEY)):  # a dataset node itself (data)
            yield section, node
        else:  # a name -> node mapping (eval)
            for name, child in node.items():
                if isinstance(child, Mapping):
                    yield f"{section}.{name}", child


def locations(tree: Mapping[str, Any], sections: Iterable[str] = SECTIONS) -> list[Location]:
    """Every dataset reference of a plain config tree, classified synthetic or real.

    Args:
        tree: Plain nested mapping shaped like the resolved config: ``synthetic.root`` and the ``sections``
            (``data``: one node; ``eval``: name -> node). Only string values of :data:`LOCATION_KEYS` and non-null
            ``source`` entries count; a missing section or key is skipped.
        sections: The sections to read (``evaluate.py`` reads ``eval`` only: its training data is the checkpoint's).

    Returns:
        The locations in config order.
    """
    synthetic = tree.get("synthetic")
    root = synthetic.get("root") if isinstance(synthetic, Mapping) else None
    found: list[Location] = []
    for prefix, node in _nodes(tree, sections):
        paths = {k: str(v) for k in LOCATION_KEYS if isinstance(v := node.get(k), str | os.PathLike) and str(v)}
        generator = node.get(SOURCE_KEY) is not None
        # A companion generator (synthetic IJB-C, TinyFace) writes next to synthetic.root, under its own root.
        generator_root = node.get(SOURCE_KEY) if isinstance(node.get(SOURCE_KEY), str) else None
        # A pairs or splits file belongs to the images it lists: one of the other world fails on its first name (the
        # reader's error), so it is never a silent mix; and own pair lists over the synthetic images are legitimate.
        images_synthetic = generator or any(_is_under(p, root) for k, p in paths.items() if k in DATA_KEYS)
        for key, path in paths.items():
            is_synthetic = (
                images_synthetic if key in PROTOCOL_KEYS else _is_under(path, root) or _is_under(path, generator_root)
            )
            found.append(Location(f"{prefix}.{key}", path, is_synthetic))
        if generator:
            found.append(Location(f"{prefix}.{SOURCE_KEY}", "<generator>", synthetic=True, generated=True))
    return found


def _listed(items: list[Location]) -> str:
    shown = ", ".join(str(loc) for loc in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def check_world(tree: Mapping[str, Any], sections: Iterable[str] = SECTIONS) -> list[Location]:
    """Refuses a config whose datasets are partly synthetic and partly real, unless ``allow_mixed_data`` is true.

    Args:
        tree: Plain config tree (see :func:`locations`), with the top-level ``allow_mixed_data`` flag.
        sections: Sections to read.

    Returns:
        The classified locations.

    Raises:
        ConfigError: Naming the synthetic and the real keys, and the fixes.
    """
    found = locations(tree, sections)
    synthetic = [loc for loc in found if loc.synthetic]
    real = [loc for loc in found if not loc.synthetic]
    if not (synthetic and real):
        return found
    where = f"synthetic (under synthetic.root or generated): {_listed(synthetic)}; real: {_listed(real)}"
    if tree.get("allow_mixed_data") is True:
        log.warning("allow_mixed_data=true: this run mixes synthetic and real datasets. %s", where)
        return found
    raise ConfigError(
        f"this run mixes synthetic and real datasets: it would report (and pick checkpoints by) numbers of one world "
        f"for a model of the other. {where}. Use one world: a real-data preset (data=casia_webface, "
        "data=insightface_rec, experiment=casia_*, paper=camsoftmax_heads) reads the training data and every "
        f"evaluation set from paths.* ({README} § {LAYOUT_SECTION}); world=synthetic (the default, with data=synthetic "
        "or data=casia_webface) reads them all from the synthetic faces. To run it as it is: allow_mixed_data=true"
    )


def check_no_null_locations(tree: Mapping[str, Any], sections: Iterable[str] = SECTIONS) -> None:
    """Refuses a dataset node whose images are null and which has no generator: a set the selected world has no
    copy of (``world=synthetic`` sets ``world.ijbb.root: null``, as there is no IJB-B-format synthetic set).

    Raises:
        ConfigError: Naming the key, the world switch and the ``paths.*`` key of the real data.
    """
    for prefix, node in _nodes(tree, sections):
        null = [k for k in DATA_KEYS if k in node and node[k] is None]
        if null and node.get(SOURCE_KEY) is None and not any(node.get(k) for k in DATA_KEYS):
            name = prefix.split(".")[-1]
            section = README_SECTIONS.get(name, LAYOUT_SECTION)
            raise ConfigError(
                f"{prefix}.{null[0]} is null: the selected world (configs/world) has no copy of this dataset (there "
                f"is no synthetic {name}). Use the real data: world=real with paths.{name}=<your copy> "
                f"({README} § {section}), or leave {name} out of eval=[...]"
            )


def _present(path: str) -> bool:
    """The path exists, or it is the file prefix of a RecordIO pack (``<dir>/train`` for ``train.rec``)."""
    p = Path(path)
    return p.exists() or any(p.with_name(p.name + suffix).is_file() for suffix in PREFIX_SUFFIXES)


def _dataset_for(path: str, dataset_dirs: Mapping[str, str]) -> str | None:
    """The ``paths`` key whose folder holds ``path`` (the deepest one), or None."""
    holders = [(len(_real_path(d)), k) for k, d in dataset_dirs.items() if isinstance(d, str) and _is_under(path, d)]
    return max(holders)[1] if holders else None


def check_real_data_present(found: Iterable[Location], dataset_dirs: Mapping[str, str]) -> None:
    """Every real dataset location must exist; synthetic ones are generated on first use.

    Args:
        found: Locations from :func:`locations`.
        dataset_dirs: The ``paths`` config (``casia_webface``, ``lfw``, ...), to name the key to set and the
            data/README.md section of each missing dataset.

    Raises:
        FileNotFoundError: One line per missing location: its key and path, the ``paths.*`` key to point at the data,
            and the data/README.md section that explains how to get and prepare it.
    """
    missing: dict[str | None, list[Location]] = {}
    known = {k: str(dataset_dirs[k]) for k in README_SECTIONS if dataset_dirs.get(k)}
    for loc in found:
        if not (loc.synthetic or loc.generated or _present(loc.value)):
            missing.setdefault(_dataset_for(loc.value, known), []).append(loc)
    if not missing:
        return
    lines = []
    for dataset, locs in missing.items():
        what = ", ".join(str(loc) for loc in locs) + (" does not exist" if len(locs) == 1 else " do not exist")
        if dataset is None:  # a location set directly, outside every paths.* folder
            lines.append(f"  {what}; see {README} § {LAYOUT_SECTION}")
        else:
            lines.append(
                f"  {README_SECTIONS[dataset]}: {what}. Put it in paths.{dataset}={known[dataset]!r} or set "
                f"paths.{dataset}=<your copy>; how to get and prepare it: {README} § {README_SECTIONS[dataset]}"
            )
    raise FileNotFoundError(
        "real dataset(s) missing; nothing was read or trained:\n"
        + "\n".join(lines)
        + f"\nThe layout under paths.data_dir: {README} § {LAYOUT_SECTION}. The embedded synthetic faces instead: "
        "world=synthetic (data=casia_webface follows it; data=insightface_rec has no synthetic copy)"
    )


def _plain(node: DictConfig, key: str) -> Any:
    """``node[key]`` resolved; None when missing (``???``) or unresolvable here (its reader reports it)."""
    try:
        value = node[key]
    except OmegaConfBaseException:
        return None
    if isinstance(value, DictConfig):  # a source node: its presence, and the folder it writes (companion sets)
        return str(value.get("root")) if value.get("root") else True
    return value


def dataset_tree(cfg: DictConfig, sections: Iterable[str] = SECTIONS) -> dict[str, Any]:
    """The plain tree the checks read, resolving only its keys (others may need a running Hydra app)."""

    def values(node: Any, keys: Iterable[str]) -> dict[str, Any]:
        return {k: _plain(node, k) for k in keys if k in node} if isinstance(node, DictConfig) else {}

    tree: dict[str, Any] = {
        "allow_mixed_data": cfg.get("allow_mixed_data", False) is True,
        "synthetic": values(cfg.get("synthetic"), ["root"]),
        "paths": values(cfg.get("paths"), README_SECTIONS),
    }
    node_keys = (*LOCATION_KEYS, SOURCE_KEY)
    for section in sections:
        node = cfg.get(section)
        if not isinstance(node, DictConfig):
            continue
        if any(k in node for k in node_keys):  # a dataset node (data)
            tree[section] = values(node, node_keys)
        else:  # name -> node (eval); null entries (eval.ytf=null) are switched off
            tree[section] = {str(n): values(node.get(n), node_keys) for n in node if node.get(n) is not None}
    return tree


def check_datasets(cfg: DictConfig, sections: Iterable[str] = SECTIONS) -> None:
    """Both checks on a composed config, before any data is read or generated.

    Args:
        cfg: The composed config (``train.yaml`` or ``evaluate.yaml``).
        sections: ``("data", "eval")`` for training; ``("eval",)`` for ``evaluate.py``.

    Raises:
        ConfigError: Synthetic and real datasets mixed without ``allow_mixed_data=true``.
        FileNotFoundError: A real dataset is not where the config says.
    """
    sections = tuple(sections)
    tree = dataset_tree(cfg, sections)
    check_no_null_locations(tree, sections)
    found = check_world(tree, sections)
    check_real_data_present(found, tree["paths"])
