"""Pure-Python RecordIO: packs written by an independent minimal writer here, read back by RecordIOFaces; and
write_recordio / the conversion scripts checked against an independent parser (never against the reader itself)."""

from __future__ import annotations

import importlib.util
import pickle
import struct
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from facetrain.data.batches import CollatedBatch, collate_batch
from facetrain.data.convert import folders_to_recordio, recordio_to_folders
from facetrain.data.recordio import RecordIOError, RecordIOFaces, encode_record, write_recordio
from facetrain.data.transforms import Uint8CHW

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- independent writer / parser (dmlc + mxnet layout)
def frame(data: bytes, cflag: int = 0) -> bytes:
    return struct.pack("<II", MAGIC, (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def ir(flag: int, label: float, id_: int, labels: tuple[float, ...] = (), id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, id_, id2) + struct.pack(f"<{len(labels)}f", *labels)


def image_record(key: int, label: float, data: bytes, vector: bool = False) -> bytes:
    # face2rec2-style packs store the class as a label vector [class, aligned]; RecBuilder stores a float.
    return ir(2, 0.0, key, (label, 1.0)) + data if vector else ir(0, label, key) + data


def write_pack(prefix: Path, records: list[tuple[int, bytes]], prop: str | None = None, idx_order=None) -> None:
    """records: (key, already framed bytes) in file order; the .idx lists them in idx_order (default file order)."""
    blob, lines = b"", []
    for key, framed in records:
        lines.append(f"{key}\t{len(blob)}\n")
        blob += framed
    if idx_order is not None:
        lines = [lines[i] for i in idx_order]
    prefix.with_suffix(".rec").write_bytes(blob)
    prefix.with_suffix(".idx").write_text("".join(lines))
    if prop is not None:
        (prefix.parent / "property").write_text(prop)


def insightface_pack(prefix: Path, images: list[bytes], labels: list[int], vector: bool = False, prop: bool = True):
    """Header record first (face2rec2 order), images as keys 1..n, then one (start, end) record per identity."""
    n = len(images)
    ids = sorted(set(labels))
    ranges = [(1 + labels.index(c), 1 + n - labels[::-1].index(c)) for c in ids]
    records = [(0, frame(ir(2, 0.0, 0, (n + 1.0, n + 1.0 + len(ids)))))]
    records += [(k + 1, frame(image_record(k + 1, labels[k], images[k], vector))) for k in range(n)]
    records += [(n + 1 + j, frame(ir(2, 0.0, n + 1 + j, (float(s), float(e))))) for j, (s, e) in enumerate(ranges)]
    write_pack(prefix, records, f"{max(labels) + 1},16,16\n" if prop else None)


def parse_rec(blob: bytes) -> dict[int, bytes]:
    """Every record of a .rec by start offset, multi-part records re-joined with the magic (dmlc ReadRecord)."""
    out, pos = {}, 0
    while pos < len(blob):
        start, parts = pos, []
        while True:
            magic, lrec = struct.unpack_from("<II", blob, pos)
            assert magic == MAGIC, f"bad magic at {pos}"
            cflag, n = lrec >> 29, lrec & ((1 << 29) - 1)
            parts.append(blob[pos + 8 : pos + 8 + n])
            pos += 8 + n + (-n % 4)
            if cflag in (0, 3):
                break
        out[start] = MAGIC_BYTES.join(parts)
    return out


def parse_payload(payload: bytes) -> tuple[tuple[int, float, int, int], tuple[float, ...], bytes]:
    flag, label, id_, id2 = struct.unpack_from("<IfQQ", payload)
    labels = struct.unpack_from(f"<{flag}f", payload, 24)
    return (flag, label, id_, id2), labels, payload[24 + 4 * flag :]


def jpeg(seed: int, size: int = 16) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


LABELS = [0, 0, 1, 2, 2, 2, 3]


@pytest.fixture
def images() -> list[bytes]:
    return [jpeg(i) for i in range(len(LABELS))]


@pytest.fixture
def pack_dir(tmp_path: Path, images: list[bytes]) -> Path:
    insightface_pack(tmp_path / "train", images, LABELS)
    return tmp_path


# ---------------------------------------------------------------------------------------------------- reading
def test_header_pack_labels_keys_and_images(pack_dir: Path, images: list[bytes]) -> None:
    ds = RecordIOFaces(pack_dir)  # a directory means train.rec / train.idx / property
    assert len(ds) == len(images)
    assert ds.keys.tolist() == list(range(1, len(images) + 1))
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == LABELS
    assert ds.num_classes == 4 and ds.image_size == (16, 16) and ds.header is not None
    for i, data in enumerate(images):
        assert ds.read_bytes(i) == data
        expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(ds.read_image(i), expected)
    tensor, label = ds[2]
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 16, 16) and label == 1
    flipped = RecordIOFaces(pack_dir / "train.rec", transform=lambda image: {"image": image[:, ::-1]})
    np.testing.assert_array_equal(flipped[0][0].numpy().transpose(1, 2, 0), ds.read_image(0)[:, ::-1])
    assert RecordIOFaces(pack_dir / "train", decode=False)[-1] == (images[-1], 3)


def test_label_vector_records_and_header_written_last(tmp_path: Path, images: list[bytes]) -> None:
    # face2rec2 image records carry [class, aligned]; RecBuilder writes the header (key 0) at the end of the file.
    n = len(images)
    records = [(k + 1, frame(image_record(k + 1, LABELS[k], images[k], vector=True))) for k in range(n)]
    records.append((0, frame(ir(2, 0.0, 0, (n + 1.0, n + 1.0), id2=1))))
    write_pack(tmp_path / "train", records)
    ds = RecordIOFaces(tmp_path / "train")
    assert ds.labels.tolist() == LABELS and ds.read_bytes(3) == images[3] and ds.image_size is None


def test_headerless_pack_uses_every_key_in_idx_order(tmp_path: Path, images: list[bytes]) -> None:
    records = [(k, frame(image_record(k, LABELS[k], images[k]))) for k in range(len(images))]
    order = [3, 0, 6, 1, 5, 2, 4]
    write_pack(tmp_path / "im2rec", records, idx_order=order)
    ds = RecordIOFaces(tmp_path / "im2rec")
    assert ds.header is None
    assert ds.keys.tolist() == order
    assert ds.labels.tolist() == [LABELS[k] for k in order]
    assert [ds.read_bytes(i) for i in range(len(ds))] == [images[k] for k in order]


def test_random_access_order(pack_dir: Path, images: list[bytes]) -> None:
    ds = RecordIOFaces(pack_dir)
    for i in np.random.default_rng(0).permutation(np.repeat(np.arange(len(images)), 2)):
        assert ds.read_bytes(int(i)) == images[i]
        assert ds[int(i)][1] == LABELS[i]
    with pytest.raises(IndexError):
        ds.read_bytes(len(images))


def test_labels_come_from_headers_without_decoding(tmp_path: Path) -> None:
    # Undecodable "images": construction reads headers only, so it succeeds; decoding names the key.
    junk = [b"not a jpeg %d" % i for i in range(len(LABELS))]
    insightface_pack(tmp_path / "train", junk, LABELS)
    ds = RecordIOFaces(tmp_path)
    assert ds.labels.tolist() == LABELS
    with pytest.raises(RecordIOError, match=r"record key 3 at byte offset \d+: image bytes cannot be decoded"):
        ds.read_image(2)


def test_property_mismatch_names_both_counts(pack_dir: Path) -> None:
    (pack_dir / "property").write_text("10572,112,112\n")
    with pytest.raises(RecordIOError, match=r"property.*10572 classes.*give 4 \(max label 3\)"):
        RecordIOFaces(pack_dir)
    (pack_dir / "property").write_text("4;112;112\n")
    with pytest.raises(RecordIOError, match="num_classes,height,width"):
        RecordIOFaces(pack_dir)


def test_truncated_pack_names_offset_and_key(tmp_path: Path, images: list[bytes]) -> None:
    records = [(k, frame(image_record(k, LABELS[k], images[k]))) for k in range(len(images))]
    write_pack(tmp_path / "p", records)
    rec, last = tmp_path / "p.rec", len(images) - 1
    blob = rec.read_bytes()
    offset = len(blob) - len(records[-1][1])
    ds = RecordIOFaces(tmp_path / "p")  # opened before the damage: reading must notice it too
    rec.write_bytes(blob[: offset + 40])
    with pytest.raises(RecordIOError, match=rf"p\.rec: record key {last} at byte offset {offset}: truncated"):
        ds.read_bytes(last)
    with pytest.raises(RecordIOError, match=rf"record key {last} at byte offset {offset}: truncated, the frame"):
        RecordIOFaces(tmp_path / "p")
    rec.write_bytes(blob[: offset + 4])  # cut inside the frame header: the idx offset now lies past the end
    with pytest.raises(RecordIOError, match=rf"p\.idx: key {last} has offset {offset}, past the end"):
        RecordIOFaces(tmp_path / "p")


def test_bad_magic_and_bad_index_lines(pack_dir: Path) -> None:
    rec, idx = pack_dir / "train.rec", pack_dir / "train.idx"
    offset = int(idx.read_text().splitlines()[2].split("\t")[1])  # key 2
    blob = bytearray(rec.read_bytes())
    blob[offset : offset + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(blob))
    with pytest.raises(RecordIOError, match=rf"record key 2 at byte offset {offset}: bad magic 0x00000000"):
        RecordIOFaces(pack_dir)
    idx.write_text("0\t0\n1\tabc\n")
    with pytest.raises(RecordIOError, match=r"train\.idx:2: expected 'key<TAB>offset'"):
        RecordIOFaces(pack_dir)


@pytest.mark.parametrize(("label", "message"), [(1.5, "label 1.5 is not"), (-1.0, "label -1.0 is not")])
def test_bad_labels_name_the_key(tmp_path: Path, images: list[bytes], label: float, message: str) -> None:
    labels = [0.0, label, 2.0]
    write_pack(tmp_path / "p", [(k, frame(image_record(k, labels[k], images[k]))) for k in range(3)])
    with pytest.raises(RecordIOError, match=rf"record key 1 at byte offset \d+: {message}"):
        RecordIOFaces(tmp_path / "p")


def test_dataloader_with_two_workers(pack_dir: Path) -> None:
    ds = RecordIOFaces(pack_dir)
    ds.read_bytes(0)  # the parent now holds an open descriptor; workers must not share or pickle it
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert torch.cat([labels for _, labels in batches]).tolist() == LABELS
    assert all(x.shape[1:] == (3, 16, 16) for x, _ in batches)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._fd is None and clone.read_bytes(1) == ds.read_bytes(1)


def test_uint8_batches_are_decoded_whole_and_equal_the_per_sample_path(pack_dir: Path, images: list[bytes]) -> None:
    ds = RecordIOFaces(pack_dir, transform=Uint8CHW())
    assert ds.fetches_batches and not RecordIOFaces(pack_dir, transform=Uint8CHW(A.HorizontalFlip(p=1))).fetches_batches
    indices = [6, 0, 3, -1]
    batch = ds.__getitems__(indices)
    assert isinstance(batch, CollatedBatch)
    images_, labels = collate_batch(batch)
    per_sample = default_collate([ds[i] for i in indices])
    assert torch.equal(images_, per_sample[0]) and torch.equal(labels, per_sample[1])
    first = cv2.cvtColor(cv2.imdecode(np.frombuffer(images[6], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert torch.equal(images_[0], torch.from_numpy(first).permute(2, 0, 1))  # decoded independently of the reader
    assert labels.tolist() == [LABELS[6], LABELS[0], LABELS[3], LABELS[6]]
    with pytest.raises(IndexError, match="out of range for 7 images"):
        ds.__getitems__([0, 7])


def test_uint8_batches_through_workers_with_reused_buffers(pack_dir: Path) -> None:
    ds = RecordIOFaces(pack_dir, transform=Uint8CHW(), worker_buffers=2)
    loader = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_batch, persistent_workers=True)
    expected = default_collate([ds[i] for i in range(len(ds))])
    for _ in range(3):
        held = list(loader)
        assert torch.equal(torch.cat([x for x, _ in held]), expected[0])
        assert torch.cat([y for _, y in held]).tolist() == LABELS


def test_a_batch_of_mixed_sizes_names_both_records(tmp_path: Path) -> None:
    insightface_pack(tmp_path / "train", [jpeg(0, 16), jpeg(1, 20)], [0, 1])
    with pytest.raises(ValueError, match=r"key 2 at byte offset \d+ is 20x20 but .*key 1 at byte offset \d+"):
        RecordIOFaces(tmp_path, transform=Uint8CHW()).__getitems__([0, 1])


def test_multipart_record_rejoined_and_matches_dmlc_framing(tmp_path: Path, images: list[bytes]) -> None:
    # The magic at 4-byte aligned payload positions splits the record (cflag 1, 2, ..., 3) and is dropped from the
    # stream; an unaligned occurrence stays inside a part. Key 2's header id field is the magic itself (offset 8).
    data = b"A" * 8 + MAGIC_BYTES + b"B" * 4 + MAGIC_BYTES + b"C" + MAGIC_BYTES + b"D" * 4
    payload1 = ir(0, 1.0, 1) + data
    parts = payload1.split(MAGIC_BYTES)
    assert len(parts) == 4  # the split at payload offset 45 is unaligned, so only 2 of the 3 occurrences cut
    framed1 = frame(parts[0], 1) + frame(parts[1], 2) + frame(parts[2] + MAGIC_BYTES + parts[3], 3)
    assert encode_record(payload1) == framed1
    payload2 = ir(0, 2.0, MAGIC) + images[0]
    framed2 = frame(payload2[:8], 1) + frame(payload2[12:], 3)
    assert encode_record(payload2) == framed2
    write_pack(tmp_path / "p", [(0, frame(ir(0, 0.0, 0) + images[1])), (1, framed1), (2, framed2)])
    ds = RecordIOFaces(tmp_path / "p")
    assert ds.labels.tolist() == [0, 1, 2]
    assert ds.read_bytes(1) == data and ds.read_bytes(2) == images[0]
    # Random payloads dense in (partial) magic numbers survive encode -> independent parse unchanged.
    rng = np.random.default_rng(0)
    pieces = [MAGIC_BYTES, MAGIC_BYTES[:3], b"x", b"yz", b""]
    for _ in range(300):
        payload = b"".join(pieces[j] for j in rng.integers(0, len(pieces), rng.integers(0, 16)))
        assert list(parse_rec(encode_record(payload)).values()) == [payload]
    # An index pointing at a continuation frame is reported, not misread.
    (tmp_path / "p.idx").write_text(f"0\t0\n1\t{len(frame(ir(0, 0.0, 0) + images[1])) + len(frame(parts[0], 1))}\n")
    with pytest.raises(RecordIOError, match="starts with continuation flag 2"):
        RecordIOFaces(tmp_path / "p")


# ---------------------------------------------------------------------------------------------------- writing
def test_write_recordio_layout_by_independent_parser(tmp_path: Path, images: list[bytes]) -> None:
    info = write_recordio(tmp_path / "out" / "train", zip(images, LABELS), image_size=(16, 16))
    assert (info.num_images, info.num_classes) == (7, 4)
    records = parse_rec((tmp_path / "out" / "train.rec").read_bytes())
    idx = [tuple(map(int, line.split("\t"))) for line in (tmp_path / "out" / "train.idx").read_text().splitlines()]
    assert sorted(offset for _, offset in idx) == sorted(records)  # one idx line per record, at its start
    by_key = {key: parse_payload(records[offset]) for key, offset in idx}
    n, ids = len(images), 4
    assert sorted(by_key) == list(range(n + ids + 1))
    assert by_key[0][:2] == ((2, 0.0, 0, 1), (n + 1.0, n + 1.0 + ids)) and by_key[0][2] == b""
    for k in range(1, n + 1):
        assert by_key[k] == ((0, float(LABELS[k - 1]), k, 0), (), images[k - 1])
    ranges = [by_key[n + 1 + j][1] for j in range(ids)]
    assert ranges == [(1.0, 3.0), (3.0, 4.0), (4.0, 7.0), (7.0, 8.0)]
    assert (tmp_path / "out" / "property").read_text() == "4,16,16\n"
    assert not list((tmp_path / "out").glob(".*tmp"))

    write_recordio(tmp_path / "flat", [(images[0], 5), (images[1], 2)], header_record=False, write_property=False)
    records = parse_rec((tmp_path / "flat.rec").read_bytes())
    assert [parse_payload(p)[0][:3] for p in records.values()] == [(0, 5.0, 0), (0, 2.0, 1)]
    assert not (tmp_path / "property").exists()
    with pytest.raises(ValueError, match="item 1: label 0 after 2; .* non-decreasing"):
        write_recordio(tmp_path / "bad", [(images[0], 2), (images[1], 0)])
    with pytest.raises(ValueError, match="item 0: label must be an integer"):
        write_recordio(tmp_path / "bad", [(images[0], 1.5)])
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".bad*"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folders_rec_folders_round_trip_is_byte_identical(tmp_path: Path, images: list[bytes]) -> None:
    tree = tmp_path / "tree"
    counts: dict[int, int] = {}
    for data, label in zip(images, LABELS):
        counts[label] = counts.get(label, 0) + 1
        (tree / f"{label:07d}").mkdir(parents=True, exist_ok=True)
        (tree / f"{label:07d}" / f"{counts[label]:03d}.jpg").write_bytes(data)
    info = folders_to_recordio(tree, tmp_path / "pack" / "train", show_progress=False)
    assert (info.num_images, info.num_classes) == (7, 4)
    assert (tmp_path / "pack" / "property").read_text() == "4,16,16\n"
    assert recordio_to_folders(tmp_path / "pack", tmp_path / "back", show_progress=False) == 7

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert files(tmp_path / "back") == files(tree)
    with pytest.raises(FileExistsError, match="not an empty directory"):
        recordio_to_folders(tmp_path / "pack", tmp_path / "back", show_progress=False)

    # The same through the command-line scripts.
    assert _script("folders_to_rec").main([str(tree), str(tmp_path / "cli" / "p"), "--quiet", "--no-header"]) == 0
    assert _script("rec_to_folders").main([str(tmp_path / "cli" / "p"), str(tmp_path / "cli_back"), "--quiet"]) == 0
    assert files(tmp_path / "cli_back") == files(tree)
