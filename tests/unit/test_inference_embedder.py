"""FaceEmbedder and the facetrain-embed / facetrain-verify commands: inputs, alignment, verification, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facetrain.data.align import ARCFACE_112x112
from facetrain.inference.cli import embed_main, verify_main
from facetrain.inference.embedder import BadInputError, FaceEmbedder, NotAFacetrainModelError
from facetrain.utils.safe_load import UnsafeCheckpointError
from tests.conftest import ROOT
from tests.inference_helpers import faces, make_checkpoint, run_config


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 112x112 model (ArcFace template) with stored thresholds 0.3 (accuracy) and 0.5 (FAR)."""
    path, _ = make_checkpoint(tmp_path_factory.mktemp("model") / "m.ckpt", run_config("convnext_atto", 112))
    return path


@pytest.fixture(scope="module")
def model(ckpt: Path) -> FaceEmbedder:
    return FaceEmbedder.from_checkpoint(ckpt)


def _write(folder: Path, images: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:03d}.png"  # PNG: lossless, so files and arrays give the same embeddings
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def test_embed_arrays_files_directories_and_list_files(model: FaceEmbedder, tmp_path: Path) -> None:
    x = faces(5, 112)
    emb = model.embed(x, batch_size=2)
    assert emb.shape == (5, 16) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.allclose(model.embed(x[3]), emb[3:4], atol=1e-5)  # one H×W×3 array; batch size does not matter
    assert np.allclose(model.embed(list(x)), emb, atol=1e-5)
    assert np.allclose(model.embed(np.ascontiguousarray(x[..., ::-1]), bgr=True), emb, atol=1e-5)
    paths = _write(tmp_path / "faces" / "sub", x)
    assert np.allclose(model.embed(tmp_path / "faces"), emb, atol=1e-5)  # recursive, sorted
    assert np.allclose(model.embed([str(p) for p in paths[::-1]]), emb[::-1], atol=1e-5)  # the order given
    (tmp_path / "list.txt").write_text("# two faces\nfaces/sub/001.png\n\n" + f"{paths[4]}\n")
    assert np.allclose(model.embed(tmp_path / "list.txt"), emb[[1, 4]], atol=1e-5)
    assert model.embed([]).shape == (0, 16)


def test_align_and_embed_with_landmarks(model: FaceEmbedder) -> None:
    aligned = faces(1, 112)[0]
    # The same face at 1.5x scale, shifted, in a 240x240 image; its landmarks are the template's, mapped likewise.
    big = np.zeros((240, 240, 3), np.uint8)
    big[20:188, 30:198] = cv2.resize(aligned, (168, 168), interpolation=cv2.INTER_LINEAR)
    landmarks = ARCFACE_112x112 * 1.5 + [30, 20]
    crop = model.align(big, landmarks)
    assert crop.shape == (112, 112, 3)
    assert np.abs(crop.astype(int) - aligned.astype(int))[8:-8, 8:-8].mean() < 12  # same face back
    via_landmarks = model.embed([big], landmarks=[landmarks])
    assert np.allclose(via_landmarks, model.embed(crop), atol=1e-5)


def test_verify_uses_the_stored_or_given_threshold(model: FaceEmbedder) -> None:
    a, b = faces(2, 112, seed=3)
    score, same = model.verify(a, a)
    assert score == pytest.approx(1.0, abs=1e-5) and same is True
    score, same = model.verify(a, b)
    assert isinstance(score, float) and same == (score >= 0.3)
    assert model.verify(a, b, threshold=-1.0)[1] is True and model.verify(a, b, threshold=1.0)[1] is False


def test_bad_input_gets_one_clear_message(model: FaceEmbedder, tmp_path: Path) -> None:
    rgb = faces(1, 112)[0]
    with pytest.raises(BadInputError, match=r"image 0 must be an H×W×3 colour image, got shape \(112, 112\)"):
        model.embed([rgb[..., 0]])
    with pytest.raises(BadInputError, match=r"got shape \(112, 112, 4\)"):
        model.embed([np.dstack([rgb, rgb[..., :1]])])
    with pytest.raises(BadInputError, match="must be uint8"):
        model.embed([rgb.astype(np.float32)])
    with pytest.raises(BadInputError, match=r"image 1 is 100x90 but the model takes aligned 112x112 crops"):
        model.embed([rgb, rgb[:100, :90]])
    with pytest.raises(BadInputError, match=r"shape \(5, 2\), got \(4, 2\)"):
        model.align(rgb, np.zeros((4, 2)))
    with pytest.raises(BadInputError, match=r"shape \(5, 2\), got \(10,\)"):
        model.embed([rgb], landmarks=[np.zeros(10)])
    with pytest.raises(BadInputError, match=r"threshold must be a cosine similarity in \[-1, 1\], got 1.5"):
        model.verify(rgb, rgb, threshold=1.5)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(OSError, match=r"bad\.jpg.*truncated JPEG"):
        model.embed([tmp_path / "bad.jpg"])


def test_model_files_that_are_not_facetrain_models(tmp_path: Path) -> None:
    (tmp_path / "notes.ckpt").write_text("hello")
    with pytest.raises(NotAFacetrainModelError, match=r"notes\.ckpt is neither a facetrain checkpoint .* nor a"):
        FaceEmbedder.load(tmp_path / "notes.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.ckpt")
    with pytest.raises(NotAFacetrainModelError, match="holds no 'facetrain_config' run config"):
        FaceEmbedder.load(tmp_path / "other.ckpt")
    with pytest.raises(NotAFacetrainModelError, match="without facetrain.json"):
        FaceEmbedder.load(tmp_path)
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01junk")
    with pytest.raises(NotAFacetrainModelError, match=r"junk\.onnx cannot be read as \.onnx model"):
        FaceEmbedder.load(tmp_path / "junk.onnx")
    with pytest.raises(NotAFacetrainModelError, match="does not exist"):
        FaceEmbedder.load(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}, "facetrain_config": {"model": {}}, "evil": Path("x")}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):  # weights-only, even for inference
        FaceEmbedder.load(tmp_path / "evil.ckpt")


def test_old_checkpoint_without_threshold(tmp_path: Path) -> None:
    old, _ = make_checkpoint(tmp_path / "old.ckpt", with_contract=False)
    model = FaceEmbedder.from_checkpoint(old)
    a = faces(1)[0]
    with pytest.raises(BadInputError, match=r"old\.ckpt stores no verification threshold .*pass threshold="):
        model.verify(a, a)
    assert model.verify(a, a, threshold=0.5)[1] is True


def test_embed_command_skips_or_names_bad_files(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = _write(tmp_path / "imgs", faces(3, 112))
    (tmp_path / "imgs" / "001b.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    out = tmp_path / "out" / "emb.npy"
    args = [str(tmp_path / "imgs"), "--model", str(ckpt), "--out", str(out), "--no-progress", "--batch-size", "2"]
    assert embed_main(args) == 2
    assert "001b.jpg" in capsys.readouterr().err and not out.exists()
    assert embed_main([*args, "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert "skipped: cannot read image" in captured.err and "001b.jpg" in captured.err
    emb = np.load(out)
    rows = (tmp_path / "out" / "emb.csv").read_text().splitlines()
    assert emb.shape == (3, 16) and rows == ["index,path"] + [f"{i},{p}" for i, p in enumerate(paths)]
    assert np.allclose(emb, FaceEmbedder.from_checkpoint(ckpt).embed(faces(3, 112)), atol=1e-5)


def test_embed_command_with_landmarks_file(ckpt: Path, tmp_path: Path) -> None:
    big = np.zeros((200, 200, 3), np.uint8)
    big[10:178, 20:188] = cv2.resize(faces(1, 112)[0], (168, 168))
    _write(tmp_path / "raw", big[None])
    points = np.round(ARCFACE_112x112 * 1.5 + [20, 10], 4)  # as written to the file
    (tmp_path / "lm.csv").write_text("path," + ",".join(f"x{i},y{i}" for i in range(1, 6)) + "\n")
    with open(tmp_path / "lm.csv", "a") as f:
        f.write("000.png," + ",".join(f"{v:.4f}" for v in points.ravel()) + "\n")
    out = tmp_path / "e.npy"
    args = [str(tmp_path / "raw"), "--model", str(ckpt), "--out", str(out), "--landmarks", str(tmp_path / "lm.csv")]
    assert embed_main([*args, "--no-progress"]) == 0
    model = FaceEmbedder.from_checkpoint(ckpt)
    assert np.allclose(np.load(out), model.embed(model.align(big, points)), atol=1e-5)
    assert embed_main([str(tmp_path / "raw"), "--model", str(ckpt), "--out", str(out), "--no-progress"]) == 2


def test_verify_command(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _write(tmp_path, faces(2, 112, seed=5))
    assert verify_main([str(a), str(a), "--model", str(ckpt)]) == 0
    assert "score 1.0000  threshold 0.3000 (stored, from lfw)  same" in capsys.readouterr().out
    assert verify_main([str(a), str(b), "--model", str(ckpt), "--threshold", "1"]) == 0
    assert "threshold 1.0000 (given)  different" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        verify_main([str(a), str(b), "--model", str(ckpt), "--threshold", "-2"])
    assert "in [-1, 1], got -2" in capsys.readouterr().err
    assert verify_main([str(a), str(tmp_path / "nope.jpg"), "--model", str(ckpt)]) == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_importable_without_lightning_or_hydra(ckpt: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "import facetrain\n"
        "assert 'torch' not in sys.modules, 'import facetrain must stay light'\n"
        "from facetrain import FaceEmbedder\n"
        f"m = FaceEmbedder.from_checkpoint({str(ckpt)!r})\n"
        "m.embed(np.zeros((1, 112, 112, 3), np.uint8))\n"
        "bad = [k for k in ('pytorch_lightning', 'lightning', 'lightning_fabric', 'hydra', 'omegaconf') "
        "if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_embeddings_equal_the_evaluation_pipeline(ckpt: Path, model: FaceEmbedder, tmp_path: Path) -> None:
    """The contract reproduces what evaluation computed: eval transform (albumentations) + backbone + L2 norm."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from facetrain.evaluation.embed import embed_images
    from facetrain.inference.model import load_checkpoint

    paths = _write(tmp_path / "faces", faces(4, 112, seed=9))
    backbone, _, _ = load_checkpoint(ckpt)
    transform = A.Compose([A.Normalize(mean=[0.5] * 3, std=[0.5] * 3), ToTensorV2()])
    expected = embed_images(backbone, [str(p) for p in paths], transform, torch.device("cpu"))
    assert np.abs(model.embed(paths) - expected).max() <= 1e-5
