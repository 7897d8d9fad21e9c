"""InsightFace verification .bin packs: loading what insightface's writers produce, refusing malicious pickles
without running them, validation errors, and the lossless LFW tree -> .bin conversion."""

from __future__ import annotations

import builtins
import importlib.util
import io
import logging
import os
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from facetrain.data.binset import (
    ALLOWED_GLOBALS,
    BinFormatError,
    UnsafeFileError,
    load_bin,
    load_video_bin,
    write_bin,
    write_video_bin,
)
from facetrain.data.convert import lfw_pairs_to_bin, ytf_splits_to_bin
from facetrain.data.protocols import read_lfw_pairs, write_lfw_pairs, write_ytf_splits

ROOT = Path(__file__).resolve().parents[2]
ISSAME = [True, False, True]


def jpeg(seed: int, size: int = 16) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


@pytest.fixture
def bins() -> list[bytes]:
    return [jpeg(i) for i in range(2 * len(ISSAME))]


def dump(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's ``pickle.dump((bins, issame), f, 2)`` writes for py2 ``str`` images (BINSTRING opcodes)."""
    out = b"\x80\x02]q\x00("  # PROTO 2, EMPTY_LIST, BINPUT, MARK
    out += b"".join(b"T" + struct.pack("<I", len(b)) + b for b in bins) + b"e"  # BINSTRING..., APPENDS
    out += b"]q\x01(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e"  # NEWTRUE / NEWFALSE
    return out + b"\x86q\x02."  # TUPLE2, BINPUT, STOP


def py2_numpy_array(data: bytes) -> bytes:
    """Python 2 pickle opcodes (no PROTO/STOP) of ``np.frombuffer(data, np.uint8)``, spelled ``numpy.core``."""
    out = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"  # _reconstruct(...)
    out += b"(K\x01K" + bytes([len(data)]) + b"\x85cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"  # state, dtype('u1')
    out += b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype state
    return out + b"\x89T" + struct.pack("<I", len(data)) + data + b"tb"  # fortran flag, raw data, BUILD


def test_load_and_decode(tmp_path: Path, bins: list[bytes]) -> None:
    ds = load_bin(dump(tmp_path / "lfw.bin", (bins, ISSAME)))
    assert len(ds) == 3 and ds.images == bins
    assert ds.issame.dtype == bool and ds.issame.tolist() == ISSAME
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(bins[4], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(ds.decode(4), expected)
    data = ds.as_dataset()
    assert len(data) == 6 and isinstance(data[0], torch.Tensor) and data[0].shape == (3, 16, 16)
    np.testing.assert_array_equal(data[4].numpy().transpose(1, 2, 0), expected)
    flipped = ds.as_dataset(lambda image: {"image": image[:, ::-1]})
    np.testing.assert_array_equal(flipped[4].numpy().transpose(1, 2, 0), expected[:, ::-1])


def test_python2_bytes_pickle(tmp_path: Path, bins: list[bytes]) -> None:
    path = tmp_path / "py2.bin"
    path.write_bytes(py2_pickle(bins, ISSAME))
    with pytest.raises(UnicodeDecodeError):  # why insightface retries with encoding='bytes'
        pickle.loads(path.read_bytes())
    ds = load_bin(path)
    assert ds.images == bins and ds.issame.tolist() == ISSAME
    # A py2 pack of numpy arrays (NumPy 1.x "numpy.core" names, raw data as py2 str) needs the same retry.
    small = [bytes(range(250, 256)) + b"%d" % i for i in range(2)]
    path.write_bytes(b"\x80\x02(" + b"".join(py2_numpy_array(b) for b in small) + b"l\x88\x85\x86.")
    assert load_bin(path).images == small


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "imencode"])
def test_python3_writers_at_every_protocol(tmp_path: Path, bins: list[bytes], protocol: int, kind: str) -> None:
    # bytes at protocol < 3 pickle via _codecs.encode, bytearray via builtins.bytearray, and build_eval_pack.py's
    # cv2.imencode arrays via numpy's reconstructors; issame may hold numpy bools.
    if kind == "bytearray":
        items: list = [bytearray(b) for b in bins]
    elif kind == "imencode":
        items = [np.frombuffer(b, np.uint8).reshape(-1, 1).copy() for b in bins]
    else:
        items = list(bins)
    issame = [np.bool_(s) for s in ISSAME] if kind == "imencode" else ISSAME
    ds = load_bin(dump(tmp_path / "x.bin", (items, issame), protocol))
    assert ds.images == bins and ds.issame.tolist() == ISSAME


class SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize(
    ("evil", "refused"), [(SystemCall, r"(posix|os)\.system"), (EvalCall, r"(builtins|__builtin__)\.eval")]
)
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, bins, evil, refused, protocol) -> None:
    marker = tmp_path / "pwned"
    path = dump(tmp_path / "evil.bin", ([*bins[:5], evil(marker)], ISSAME), protocol)
    with pytest.raises(UnsafeFileError, match=rf"evil\.bin: refused to unpickle global {refused}"):
        load_bin(path)
    assert not marker.exists()
    # The payload is live: the file really names the dangerous callable (plain pickle.load would call it).
    assert (b"system" if evil is SystemCall else b"eval") in path.read_bytes()


def test_other_globals_refused(tmp_path: Path) -> None:
    class Loader:
        def __reduce__(self):
            return (np.load, ("/etc/passwd",))

    with pytest.raises(UnsafeFileError, match=r"refused to unpickle global numpy\.load"):
        load_bin(dump(tmp_path / "np.bin", ([Loader()], [])))
    # An allowed name with a dangerous argument shape is still refused by its wrapper.
    crafted = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R]\x86."
    (tmp_path / "codec.bin").write_bytes(crafted)
    with pytest.raises(BinFormatError, match="only latin1 text"):
        load_bin(tmp_path / "codec.bin")


# The documented allow-list (binset.ALLOWED_GLOBALS' docstring): byte-string builders and NumPy's array machinery.
# Pinned exactly: one more name (builtins.getattr, say) turns the gadget pickles below into code execution.
DOCUMENTED_GLOBALS = {
    ("_codecs", "encode"),
    ("builtins", "bytes"),
    ("__builtin__", "bytes"),
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def test_allow_list_is_exactly_the_documented_set() -> None:
    assert set(ALLOWED_GLOBALS) == DOCUMENTED_GLOBALS


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _call(fn: bytes, *args: bytes) -> bytes:
    return fn + b"(" + b"".join(args) + b"tR"  # MARK, args, TUPLE, REDUCE: fn(*args)


def getattr_gadget(marker: Path) -> bytes:
    """``getattr(getattr(getattr(bytes, '__globals__'), 'get')('os'), 'system')('touch <marker>')``, as a .bin.

    ``builtins.bytes`` resolves to the loader's Python wrapper, whose ``__globals__`` is the binset module, which
    imports ``os``: a chain of attribute lookups from an allowed name to ``os.system``.
    """
    getattr_ = _global("builtins", "getattr")
    module_dict = _call(getattr_, _global("builtins", "bytes"), _text("__globals__"))
    os_module = _call(_call(getattr_, module_dict, _text("get")), _text("os"))
    payload = _call(_call(getattr_, os_module, _text("system")), _text(f"touch {marker}"))
    return b"\x80\x02" + payload + b"]\x86."  # (payload, []): PROTO 2 ... TUPLE2 STOP


class Gadget:
    """``__reduce__`` returning a callable that is itself rebuilt by ``__reduce__`` (pickle nests them)."""

    def __init__(self, fn: object, *args: object) -> None:
        self.fn, self.args = fn, args

    def __call__(self, *args: object) -> None:  # pickle requires the reduce callable to be callable
        raise AssertionError("only for pickling")

    def __reduce__(self):  # noqa: ANN204
        return (self.fn, self.args)


def reduce_chains(marker: Path) -> dict[str, object]:
    """Payloads hidden inside the allowed types' own ``__reduce__`` state, or chained through nested reduces."""
    command = f"touch {marker}"
    return {
        # An object array: ndarray/_reconstruct/dtype are allowed, its items are pickled inline.
        "object_array": np.array([SystemCall(marker), b"x"], dtype=object),
        # A dtype's metadata travels in its pickled state.
        "dtype_metadata": np.dtype(np.uint8, metadata={"x": SystemCall(marker)}),
        # A reduce whose callable is the result of another reduce: getattr(__import__('os'), 'system')(command).
        "nested_reduce": Gadget(Gadget(getattr, Gadget(__import__, "os"), "system"), command),
        # An allowed callable whose argument is built by a forbidden one.
        "allowed_outer": Gadget(bytearray, Gadget(os.system, command)),
    }


def test_getattr_gadget_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "gadget.bin"
    path.write_bytes(getattr_gadget(marker))
    with pytest.raises(UnsafeFileError, match=r"refused to unpickle global builtins\.getattr"):
        load_bin(path)
    assert not marker.exists()
    # The gadget is live: with getattr resolvable (plain pickle), the chain reaches os.system and runs.
    live = {**ALLOWED_GLOBALS, ("builtins", "getattr"): lambda: getattr}

    class Permissive(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            return live[(module, name)]()

    Permissive(io.BytesIO(path.read_bytes())).load()
    assert marker.exists()


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("kind", ["object_array", "dtype_metadata", "nested_reduce", "allowed_outer"])
def test_reduce_chains_through_allowed_types_are_refused(tmp_path: Path, kind: str, protocol: int) -> None:
    marker = tmp_path / "pwned"
    path = dump(tmp_path / "chain.bin", ([reduce_chains(marker)[kind]], []), protocol)
    refused = r"refused to unpickle global (posix|os|builtins|__builtin__)\.(system|getattr|__import__)\b"
    with pytest.raises(UnsafeFileError, match=refused):
        load_bin(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (([b"a"] * 3, [True, False]), r"3 images for 2 pairs; .* \(expected 4\)"),
        (([b"a", b"b"], [True], [1]), "expected a pickled \\(bins, issame_list\\) pair, found tuple of length 3"),
        ({"bins": []}, "expected a pickled .* pair, found dict"),
        (([b"a", b""], [True]), "image 1 is bytes b''"),
        (([b"a", 7], [True]), "image 1 is int 7"),
        (([b"a", b"b"], ["yes"]), r"issame_list\[0\] is str 'yes'"),
        (([b"a", b"b"], [2]), r"issame_list\[0\] is int 2"),
    ],
)
def test_structure_errors_name_file_and_finding(tmp_path: Path, obj: object, message: str) -> None:
    with pytest.raises(BinFormatError, match=rf"bad\.bin: {message}"):
        load_bin(dump(tmp_path / "bad.bin", obj))


def test_unreadable_file_and_corrupt_image(tmp_path: Path, bins: list[bytes]) -> None:
    (tmp_path / "junk.bin").write_bytes(b"\x80\x05not a pickle")
    with pytest.raises(BinFormatError, match=r"junk\.bin: not a readable pickle"):
        load_bin(tmp_path / "junk.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        load_bin(tmp_path / "missing.bin")
    ds = load_bin(dump(tmp_path / "c.bin", ([bins[0], b"\xff\xd8garbage"], [True])))
    with pytest.raises(BinFormatError, match=r"c\.bin: image 1 \(pair 0\) cannot be decoded"):
        ds.decode(1)
    ds.decode(0)  # the good image still decodes, since decoding is lazy and per image


def test_write_bin_is_insightface_format(tmp_path: Path, bins: list[bytes]) -> None:
    path = write_bin(tmp_path / "w.bin", bins, np.array(ISSAME))
    with path.open("rb") as f:
        raw_bins, raw_issame = pickle.load(f)
    assert raw_bins == bins and raw_issame == ISSAME and all(type(s) is bool for s in raw_issame)
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]  # no temporary file left behind
    with pytest.raises(BinFormatError, match="5 images for 3 pairs"):
        write_bin(tmp_path / "v.bin", bins[:5], ISSAME)
    assert not (tmp_path / "v.bin").exists()


def test_lfw_tree_to_bin_round_trip_is_lossless(tmp_path: Path) -> None:
    folds = [
        ([("Ann_Lee", 1, 2)], [("Ann_Lee", 1, "Bo_Yu", 1)]),
        ([("Bo_Yu", 1, 3)], [("Cy_Ro", 1, "Bo_Yu", 2)]),
    ]
    files: dict[str, bytes] = {}
    for name, count in [("Ann_Lee", 2), ("Bo_Yu", 3), ("Cy_Ro", 1)]:
        (tmp_path / "lfw" / name).mkdir(parents=True)
        for n in range(1, count + 1):
            rel = f"{name}/{name}_{n:04d}.jpg"
            files[rel] = jpeg(len(files))
            (tmp_path / "lfw" / rel).write_bytes(files[rel])
    write_lfw_pairs(tmp_path / "pairs.txt", folds)
    assert lfw_pairs_to_bin(tmp_path / "lfw", tmp_path / "pairs.txt", tmp_path / "lfw.bin", show_progress=False) == 4
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    ds = load_bin(tmp_path / "lfw.bin")
    assert ds.images == [files[p] for pair in zip(pairs.left, pairs.right) for p in pair]
    assert ds.issame.tolist() == pairs.issame.tolist() == [True, False, True, False]

    spec = importlib.util.spec_from_file_location("pairs_to_bin", ROOT / "scripts" / "pairs_to_bin.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--root", str(tmp_path / "lfw"), "--pairs-file", str(tmp_path / "pairs.txt"), "--output"]
    assert script.main([*argv, str(tmp_path / "cli.bin"), "--quiet"]) == 0
    assert (tmp_path / "cli.bin").read_bytes() == (tmp_path / "lfw.bin").read_bytes()
    (tmp_path / "lfw" / "Cy_Ro" / "Cy_Ro_0001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="Cy_Ro_0001"):
        lfw_pairs_to_bin(tmp_path / "lfw", tmp_path / "pairs.txt", tmp_path / "x.bin", show_progress=False)


# --- video packs (YTF) ----------------------------------------------------------------------------------------------
def test_video_pack_load_shares_repeated_videos_and_decodes(tmp_path: Path) -> None:
    a, b, c = [jpeg(1), jpeg(2)], [jpeg(3)], [jpeg(4), jpeg(5), jpeg(6)]
    # Written here with plain pickle: a video in two pairs is one list object, stored once by pickle's memo.
    ds = load_video_bin(dump(tmp_path / "ytf.bin", ([a, b, a, c], [True, False])))
    assert len(ds) == 2 and ds.issame.tolist() == [True, False]
    assert ds.videos == [a, b, c] and ds.pair_videos.tolist() == [0, 1, 0, 2]
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(c[2], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(ds.decode(2, 2), expected)
    # Equal videos that are separate objects stay separate entries (nothing is merged by guessing).
    assert load_video_bin(dump(tmp_path / "copy.bin", ([a, b, list(a), c], [1, 0]))).pair_videos.tolist() == [
        0,
        1,
        2,
        3,
    ]


@pytest.mark.parametrize(
    ("bins", "message"),
    [
        ([b"\xff\xd8", [b"x"]], r"entry 0 \(pair 0\) is bytes, expected a non-empty list of encoded frames"),
        ([[b"x"], []], r"entry 1 \(pair 0\) is list of length 0"),
        ([[b"x"], [b"y", 3]], r"entry 1 \(pair 0\) frame 1 is int"),
        ([[b"x"], [b"y"], [b"z"]], r"3 videos for 1 pairs"),
    ],
)
def test_video_pack_structure_errors(tmp_path: Path, bins: list, message: str) -> None:
    with pytest.raises(BinFormatError, match=message):
        load_video_bin(dump(tmp_path / "bad.bin", (bins, [True] * (len(bins) // 2))))


def test_video_pack_refuses_code_and_image_packs(tmp_path: Path, bins: list[bytes]) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafeFileError, match="refused to unpickle global"):
        load_video_bin(dump(tmp_path / "evil.bin", ([[bins[0]], [SystemCall(marker)]], [True])))
    assert not marker.exists()
    with pytest.raises(BinFormatError, match="image packs such as lfw.bin load with load_bin"):
        load_video_bin(dump(tmp_path / "lfw.bin", (bins, ISSAME)))
    with pytest.raises(FileNotFoundError, match="video verification .bin not found"):
        load_video_bin(tmp_path / "missing.bin")


def test_write_video_bin_is_read_by_plain_pickle(tmp_path: Path) -> None:
    a, b = [jpeg(1), jpeg(2)], [jpeg(3)]
    write_video_bin(tmp_path / "v.bin", [a, b, b, a], np.array([True, False]))
    with (tmp_path / "v.bin").open("rb") as f:
        videos, issame = pickle.load(f)
    assert videos == [a, b, b, a] and videos[0] is videos[3] and videos[1] is videos[2]  # each video stored once
    assert issame == [True, False] and all(type(x) is bool for x in issame)
    with pytest.raises(BinFormatError, match="3 videos for 2 pairs"):
        write_video_bin(tmp_path / "w.bin", [a, b, a], [True, False])
    assert not (tmp_path / "w.bin").exists()


def test_ytf_tree_to_video_bin_is_lossless(tmp_path: Path) -> None:
    videos = {"Ann/0": (1, 2, 10), "Ann/1": (5,), "Bo/3": (7, 8), "Cy/2": (1, 3)}
    files: dict[str, list[bytes]] = {}
    for video, frames in videos.items():
        folder = tmp_path / "db" / video
        folder.mkdir(parents=True)
        files[video] = []
        for n in frames:  # frame 10 sorts after 2 by number, before it by name
            files[video].append(jpeg(len(files) * 10 + n))
            (folder / f"aligned_detect_{video[-1]}.{n}.jpg").write_bytes(files[video][-1])
    rows = [
        (1, 1, "Ann/0", "Ann/1", 1),
        (1, 2, "Ann/0", "Bo/3", 0),
        (2, 1, "Bo/3", "Bo/3", 1),
        (2, 2, "Cy/2", "Ann/1", 0),
    ]
    write_ytf_splits(tmp_path / "splits.txt", rows)
    out = tmp_path / "ytf.bin"
    assert ytf_splits_to_bin(tmp_path / "db", tmp_path / "splits.txt", out, n_splits=2, show_progress=False) == 4
    with out.open("rb") as f:  # read independently of the facetrain reader
        entries, issame = pickle.load(f)
    assert entries == [files[v] for row in rows for v in row[2:4]]
    assert issame == [True, False, True, False]
    assert entries[0] is entries[2]  # Ann/0 stored once
    sampled = tmp_path / "sampled.bin"
    ytf_splits_to_bin(tmp_path / "db", tmp_path / "splits.txt", sampled, n_splits=2, frames_per_video=2,
                      show_progress=False)  # fmt: skip
    assert load_video_bin(sampled).videos[0] == [files["Ann/0"][0], files["Ann/0"][2]]  # frames 1 and 10

    spec = importlib.util.spec_from_file_location("pairs_to_bin", ROOT / "scripts" / "pairs_to_bin.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = ["--root", str(tmp_path / "db"), "--splits-file", str(tmp_path / "splits.txt"), "--n-splits", "2"]
    assert script.main([*argv, "--output", str(tmp_path / "cli.bin"), "--quiet"]) == 0
    assert (tmp_path / "cli.bin").read_bytes() == out.read_bytes()

    uneven = [(1, 1, "Ann/0", "Ann/1", 1), (2, 1, "Ann/0", "Bo/3", 0), (2, 2, "Bo/3", "Bo/3", 1)]
    write_ytf_splits(tmp_path / "uneven.txt", uneven)
    # Splits of unequal size are refused by the splits reader itself (every split the same size, half same).
    with pytest.raises(ValueError, match=r"uneven\.txt:2: split 1 ends here with 1 pairs \(1 same, 0 different\)"):
        ytf_splits_to_bin(tmp_path / "db", tmp_path / "uneven.txt", tmp_path / "u.bin", n_splits=2)
    (tmp_path / "db" / "Cy/2" / "aligned_detect_2.3.jpg").unlink()
    (tmp_path / "db" / "Cy/2" / "aligned_detect_2.1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="Cy/2' holds no frame images"):
        ytf_splits_to_bin(tmp_path / "db", tmp_path / "splits.txt", tmp_path / "x.bin", n_splits=2)
    assert not (tmp_path / "x.bin").exists()


# --- images that are not the evaluation size -------------------------------------------------------------------


def test_odd_sized_images_are_resized_like_insightface(tmp_path: Path, bins: list[bytes], caplog) -> None:
    big = jpeg(100, size=32)  # same aspect ratio, twice the size: InsightFace's load_bin resizes it
    png = cv2.imencode(".png", np.random.default_rng(7).integers(0, 256, (24, 24, 3), dtype=np.uint8))[1].tobytes()
    items = [*bins[:3], big, bins[4], png]
    with caplog.at_level(logging.WARNING, logger="facetrain.data.binset"):
        ds = load_bin(dump(tmp_path / "odd.bin", (items, ISSAME)))
    (message,) = [r.getMessage() for r in caplog.records]  # counted once, when the pack is loaded
    assert "odd.bin: 2 of 6 images are not 16x16 (the first is image 3, 32x32)" in message
    assert ds.image_size == (16, 16)
    raw = cv2.cvtColor(cv2.imdecode(np.frombuffer(big, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(ds.decode(3), cv2.resize(raw, (16, 16), interpolation=cv2.INTER_CUBIC))
    np.testing.assert_array_equal(ds.decode(0), load_bin(dump(tmp_path / "ok.bin", (bins, ISSAME))).decode(0))
    data = ds.as_dataset()
    assert torch.stack([data[i] for i in range(len(data))]).shape == (6, 3, 16, 16)  # what failed after epoch 1
    # An explicit evaluation size resizes every other image (InsightFace's image_size argument).
    assert load_bin(tmp_path / "odd.bin", image_size=(32, 32)).decode(0).shape == (32, 32, 3)


def test_image_of_another_aspect_ratio_is_refused_naming_pack_and_index(tmp_path: Path, bins: list[bytes]) -> None:
    wide = cv2.imencode(".jpg", np.zeros((16, 24, 3), np.uint8))[1].tobytes()
    path = dump(tmp_path / "wide.bin", ([*bins[:3], wide, *bins[4:]], ISSAME))
    with pytest.raises(BinFormatError, match=r"wide\.bin: image 3 \(pair 1\) is 24x16 .* pack's images are 16x16"):
        load_bin(path)


def test_size_the_header_does_not_tell_is_fixed_at_decode(tmp_path: Path, bins: list[bytes]) -> None:
    # BMP sizes are not read from the header at load; decoding still returns the pack's size, or names the image.
    bmp = cv2.imencode(".bmp", np.full((32, 32, 3), 90, np.uint8))[1].tobytes()
    odd = cv2.imencode(".bmp", np.full((16, 20, 3), 90, np.uint8))[1].tobytes()
    ds = load_bin(dump(tmp_path / "bmp.bin", ([*bins[:4], bmp, odd], ISSAME)))
    assert ds.decode(4).shape == (16, 16, 3) and int(ds.decode(4).mean()) == 90
    with pytest.raises(BinFormatError, match=r"bmp\.bin: image 5 \(pair 2\) is 20x16"):
        ds.decode(5)
