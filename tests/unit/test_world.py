"""One data world per run (facetrain.data.world, configs/world): the switch, the mixed-data refusal, missing data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from facetrain.data.world import (
    README_SECTIONS,
    check_datasets,
    check_real_data_present,
    check_world,
    dataset_tree,
    locations,
)
from facetrain.tasks.evaluate import evaluate
from facetrain.tasks.train import train
from facetrain.utils.rules import ConfigError
from tests.conftest import CONFIGS, ROOT


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


# --- the pure checks, on plain trees ---------------------------------------------------------------------------------

SYN = "/d/synthetic"
GEN = {"_target_": "facetrain.data.synthetic.SyntheticFaces", "root": SYN}


def _tree(data: dict[str, Any], **evals: dict[str, Any]) -> dict[str, Any]:
    return {"synthetic": {"root": SYN}, "data": data, "eval": evals}


SYNTHETIC_RUN = _tree(
    {"train_root": f"{SYN}/casia", "source": GEN},
    lfw={"root": f"{SYN}/lfw", "pairs_file": f"{SYN}/pairs.txt", "source": GEN},
    openset={"root": f"{SYN}/lfw", "blufr_dir": None, "source": GEN},
)
REAL_RUN = _tree(
    {"train_root": "/d/CASIA-WebFace", "source": None},
    lfw={"root": "/d/lfw", "pairs_file": "/d/lfw/pairs.txt", "source": None},
    lfw_bin={"path": "/d/bin/lfw.bin"},
)


def test_locations_are_classified_by_synthetic_root_and_generator() -> None:
    found = {loc.key: loc.synthetic for loc in locations(SYNTHETIC_RUN)}
    assert found == {
        "data.train_root": True,
        "data.source": True,
        "eval.lfw.root": True,
        "eval.lfw.pairs_file": True,
        "eval.lfw.source": True,
        "eval.openset.root": True,
        "eval.openset.source": True,  # blufr_dir null: no location
    }
    assert not any(loc.synthetic for loc in locations(REAL_RUN))
    # A sibling whose name starts like the synthetic root is not under it; a relative spelling of it is.
    near = _tree({"train_root": "/d/synthetic_real/casia", "source": None}, ytf={"root": "/d/synthetic/../ytf"})
    assert [loc.synthetic for loc in locations(near)] == [False, False]
    assert locations(_tree({"train_root": "/d/./synthetic//casia"}))[0].synthetic
    assert [loc.key for loc in locations(SYNTHETIC_RUN, sections=("eval",))][0] == "eval.lfw.root"


def test_one_world_passes() -> None:
    assert len(check_world(SYNTHETIC_RUN)) == 7
    assert len(check_world(REAL_RUN)) == 4
    # A protocol file takes the world of the images it lists: own pairs over the synthetic LFW images are one world
    # (a list of the other world's names fails in its reader on the first name, never silently).
    own_pairs = _tree(
        {"train_root": f"{SYN}/casia", "source": GEN},
        lfw={"root": f"{SYN}/lfw", "pairs_file": "/mine/pairs.txt", "source": GEN},
    )
    assert {loc.key: loc.synthetic for loc in check_world(own_pairs)}["eval.lfw.pairs_file"]
    real_pairs = _tree({"train_root": "/d/casia"}, lfw={"root": "/d/lfw", "pairs_file": f"{SYN}/pairs.txt"})
    assert not any(loc.synthetic for loc in check_world(real_pairs))


@pytest.mark.parametrize(
    ("tree", "synthetic", "real"),
    [
        # The issue's trap: real CASIA training, synthetic LFW pairs (the old defaults of eval/lfw.yaml).
        (
            _tree(
                {"train_root": "/d/CASIA-WebFace", "source": None},
                lfw={"root": f"{SYN}/lfw", "pairs_file": f"{SYN}/pairs.txt", "source": GEN},
            ),
            ["eval.lfw.root", "eval.lfw.source"],
            ["data.train_root"],
        ),
        # The reverse: synthetic training, a real .bin pack.
        (
            _tree({"train_root": f"{SYN}/casia", "source": GEN}, lfw_bin={"path": "/d/bin/lfw.bin"}),
            ["data.train_root", "data.source"],
            ["eval.lfw_bin.path"],
        ),
        # Real paths but the generator left on (the third of the old three overrides forgotten).
        (
            _tree(
                {"train_root": "/d/CASIA-WebFace", "source": None},
                lfw={"root": "/d/lfw", "pairs_file": "/d/lfw/pairs.txt", "source": True},
            ),
            ["eval.lfw.source"],
            ["data.train_root", "eval.lfw.root"],
        ),
    ],
)
def test_mixed_worlds_are_refused_naming_the_keys_and_the_fix(
    tree: dict[str, Any], synthetic: list[str], real: list[str]
) -> None:
    with pytest.raises(ConfigError, match="mixes synthetic and real datasets") as info:
        check_world(tree)
    message = str(info.value)
    head, tail = message.split("; real: ")
    for key in synthetic:
        assert key in head.split("synthetic (under synthetic.root or generated): ")[1], key
    for key in real:
        assert key in tail, key
    assert "data=casia_webface" in message and "world=synthetic" in message and "allow_mixed_data=true" in message
    check_world({**tree, "allow_mixed_data": True})  # the opt-in


def test_evaluate_checks_only_its_evaluation_sets() -> None:
    tree = _tree({"train_root": f"{SYN}/casia", "source": GEN}, lfw={"root": "/d/lfw", "pairs_file": "/d/p.txt"})
    check_world(tree, sections=("eval",))
    tree["eval"]["ytf"] = {"root": f"{SYN}/ytf/aligned_images_DB", "source": GEN}
    with pytest.raises(ConfigError, match=r"eval\.ytf\.root.*real: eval\.lfw\.root"):
        check_world(tree, sections=("eval",))


def test_missing_real_data_names_key_path_paths_key_and_readme_section(tmp_path: Path) -> None:
    paths = {k: str(tmp_path / k) for k in README_SECTIONS}
    (tmp_path / "lfw").mkdir()
    (tmp_path / "lfw" / "pairs.txt").write_text("10\t1\n")
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "train.rec").write_bytes(b"")  # a RecordIO pack given by its prefix
    tree = {
        "synthetic": {"root": str(tmp_path / "synthetic")},
        "data": {"train_root": str(tmp_path / "casia_webface"), "source": None},
        "eval": {
            "lfw": {"root": paths["lfw"], "pairs_file": f"{paths['lfw']}/pairs.txt"},
            "ytf": {"root": f"{paths['ytf']}/aligned_images_DB", "splits_file": f"{paths['ytf']}/splits.txt"},
            "mine": {"root": "/nowhere/mine"},
            "rec": {"path": str(tmp_path / "pack" / "train")},
            "generated": {"root": str(tmp_path / "synthetic" / "lfw"), "source": True},
        },
    }
    with pytest.raises(FileNotFoundError) as info:
        check_real_data_present(locations(tree), paths)
    lines = str(info.value).splitlines()
    casia, ytf, mine = lines[1:4]
    assert len(lines) == 5, lines  # present and synthetic locations are not listed
    assert f"data.train_root='{tmp_path / 'casia_webface'}' does not exist" in casia
    assert "paths.casia_webface=" in casia and casia.endswith("data/README.md § CASIA-WebFace")
    assert "eval.ytf.root=" in ytf and "eval.ytf.splits_file=" in ytf and "do not exist" in ytf
    assert "paths.ytf=" in ytf and ytf.endswith("data/README.md § YouTube Faces")
    assert "eval.mine.root='/nowhere/mine' does not exist; see data/README.md § Layout" in mine
    assert "world=synthetic" in lines[4]


def test_every_dataset_key_of_paths_has_a_readme_section() -> None:
    """configs/paths, the README_SECTIONS table and data/README.md's headings agree."""
    keys = set(yaml.safe_load((CONFIGS / "paths" / "default.yaml").read_text())) - {
        "root_dir",
        "data_dir",
        "log_dir",
        "output_dir",
    }
    assert keys == set(README_SECTIONS)
    headings = re.findall(r"^## (.+)$", (ROOT / "data" / "README.md").read_text(), flags=re.M)
    for section in [*README_SECTIONS.values(), "Layout"]:
        assert any(h.startswith(section) for h in headings), f"data/README.md has no '## {section}' section"


# --- the shipped configs ----------------------------------------------------------------------------------------------


@pytest.fixture
def compose_run(tmp_path: Path):
    """Compose ``train.yaml`` as a run sees it (HydraConfig set, so ``${hydra:...}`` resolves)."""

    def _compose(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.root_dir={tmp_path}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # later tests must not see this config as a running app's


def _strings(node: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _strings(v, f"{key}.{k}" if key else str(k))]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _strings(v, f"{key}[{i}]")]
    return [(key, node)] if isinstance(node, str) else []


REAL_PRESETS = (
    ["data=casia_webface", "data=insightface_rec"]
    + [f"experiment={o}" for o in _options("experiment") if o.startswith("casia_") or o == "camsoftmax_official"]
    + [f"paper={o}" for o in _options("paper") if not o.endswith("_synthetic")]
)
SYNTHETIC_PRESETS = ["", "experiment=smoke", "experiment=synthetic_cpu"] + [
    f"paper={o}" for o in _options("paper") if o.endswith("_synthetic")
]


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_real_presets_read_no_synthetic_data(compose_run, preset: str) -> None:
    cfg = compose_run(preset)
    resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("synthetic", "paths", "data", "eval")}
    synthetic_root = str(Path(resolved["synthetic"]["root"]))
    for section in ("eval", "data"):
        for key, value in _strings(resolved[section], section):
            assert synthetic_root not in value, f"{preset}: {key}={value!r} is synthetic"
    assert all(node.get("source") is None for node in resolved["eval"].values()), preset
    assert resolved["data"]["source"] is None
    assert str(resolved["data"]["train_root"]).startswith(str(Path(resolved["paths"]["data_dir"]))), preset
    assert resolved["eval"], preset
    check_world(dataset_tree(cfg))  # one world


@pytest.mark.parametrize("preset", SYNTHETIC_PRESETS)
def test_synthetic_presets_read_only_synthetic_data(compose_run, preset: str) -> None:
    cfg = compose_run(*([preset] if preset else []))
    found = check_world(dataset_tree(cfg))
    assert found and all(loc.synthetic for loc in found), preset
    check_datasets(cfg)  # nothing real to look for: the synthetic sets are generated on first use


def test_default_run_reads_the_same_synthetic_sets_as_before(compose_cfg, tmp_path: Path) -> None:
    """The values of eval/lfw, eval/ytf, eval/openset and data/synthetic before the world group (git HEAD)."""
    cfg = compose_cfg("eval=[lfw,ytf,openset]")
    syn = tmp_path / "data" / "synthetic"
    assert cfg.synthetic.root == str(syn)
    assert cfg.data.train_root == f"{syn}/casia"
    assert cfg.eval.lfw.root == f"{syn}/lfw" and cfg.eval.lfw.pairs_file == f"{syn}/pairs.txt"
    assert cfg.eval.ytf.root == f"{syn}/ytf/aligned_images_DB" and cfg.eval.ytf.splits_file == f"{syn}/ytf/splits.txt"
    assert cfg.eval.openset.root == f"{syn}/lfw" and cfg.eval.openset.blufr_dir is None
    for node in (cfg.data, cfg.eval.lfw, cfg.eval.ytf, cfg.eval.openset):
        assert node.source == cfg.synthetic  # the generator, as ${synthetic} was
    assert cfg.allow_mixed_data is False


def test_one_key_per_dataset_and_the_world_switch(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg("experiment=casia_arcface", "paths.lfw=/elsewhere/lfw", "paths.data_dir=/big")
    assert cfg.world == compose_cfg("data=casia_webface", "paths.lfw=/elsewhere/lfw", "paths.data_dir=/big").world
    assert cfg.eval.lfw.root == "/elsewhere/lfw" and cfg.eval.lfw.pairs_file == "/elsewhere/lfw/pairs.txt"
    assert cfg.data.train_root == "/big/CASIA-WebFace" and cfg.eval.ytf.splits_file == "/big/ytf/splits.txt"
    assert compose_cfg("data=insightface_rec", "eval=[lfw_bin]", "paths.bin=/p").eval.lfw_bin.path == "/p/lfw.bin"
    # world=synthetic on the command line moves a real recipe's training data and evaluation sets together.
    moved = compose_cfg("experiment=casia_arcface", "world=synthetic")
    assert moved.data.train_root == f"{tmp_path}/data/synthetic/casia" and moved.data.source == moved.synthetic
    assert moved.eval.lfw.root == f"{tmp_path}/data/synthetic/lfw" and moved.eval.lfw.source == moved.synthetic
    assert moved.loss._target_.endswith("ArcFaceHead")


# --- the tasks refuse before any data is read ------------------------------------------------------------------------


def test_train_refuses_a_mixed_run_before_reading_data(compose_cfg, tmp_path: Path) -> None:
    # experiment=smoke: should the check be skipped, the run fails in seconds rather than generating the default set.
    with pytest.raises(ConfigError, match=r"data\.train_root=.*real: eval\.lfw\.root="):
        train(compose_cfg("experiment=smoke", "world=real"))
    with pytest.raises(ConfigError, match=r"real: data\.train_root="):
        train(compose_cfg("experiment=smoke", "data=insightface_rec", "world=synthetic"))
    assert not (tmp_path / "data").exists()  # nothing generated
    assert not (tmp_path / "run").exists()  # no run directory either


def test_train_stops_on_a_missing_real_dataset_naming_it(compose_cfg, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        train(compose_cfg("data=casia_webface"))
    message = str(info.value)
    assert f"data.train_root='{tmp_path}/data/CASIA-WebFace' does not exist" in message
    assert "data/README.md § CASIA-WebFace" in message and "data/README.md § LFW" in message
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_evaluate_checks_its_sets_before_the_checkpoint(tmp_path: Path) -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            overrides = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", "ckpt_path=x.ckpt"]
            real = compose("evaluate", overrides=[*overrides, "world=real", "eval=[lfw]"])
            mixed = compose("evaluate", overrides=[*overrides, "eval=[lfw,lfw_bin]"])
    finally:
        GlobalHydra.instance().clear()
    with pytest.raises(FileNotFoundError, match="data/README.md § LFW"):
        evaluate(real)  # the training data (data=synthetic here) is not the evaluation's concern
    with pytest.raises(ConfigError, match=r"real: eval\.lfw_bin\.path="):
        evaluate(mixed)
    assert not (tmp_path / "run").exists()
