"""Tests for label.apply: a new data version from v1 and review decisions."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.scripts.manifest import MANIFEST_SCHEMA
from label import apply

KEYS = {
    "accepted": "00000000000000a1",
    "kept": "00000000000000b2",
    "relabelled": "00000000000000c3",
    "removed": "00000000000000d4",
    "untouched": "00000000000000e5",
    "failed": "00000000000000f6",
}
LABELS = ["fashion", "electronics", "toys"]
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def make_v1(root: Path) -> Path:
    """Write a small v1: five images, one failed row, labels.json and stats."""
    v1 = root / "processed" / "v1"
    rows = []
    for name, key in KEYS.items():
        ok = name != "failed"
        path = f"images/fashion/{key}.jpg" if ok else None
        if ok:
            (v1 / path).parent.mkdir(parents=True, exist_ok=True)
            (v1 / path).write_bytes(b"\xff\xd8 jpeg " + key.encode())
        rows.append(
            {
                "key": key,
                "url": f"https://example.com/{key}.jpg",
                "label": "fashion",
                "status": "ok" if ok else "http_error",
                "http_status": 200 if ok else 404,
                "path": path,
            }
        )
    schema = pa.schema([MANIFEST_SCHEMA.field(name) for name in rows[0]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), v1 / "manifest.parquet")
    (v1 / "images" / "toys").mkdir()
    labels = [{"label": label, "name": label.title(), "rows": 1} for label in LABELS[:2]]
    (v1 / "labels.json").write_text(json.dumps(labels))
    (v1 / "stats").mkdir()
    (v1 / "stats" / "fetch.json").write_text("{}\n")
    return v1


def write_decisions(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def record(name: str, decision: str, new_label: str | None) -> dict:
    return {"key": KEYS[name], "decision": decision, "new_label": new_label, "time": "t"}


STANDARD_DECISIONS = [
    record("relabelled", "keep", "fashion"),  # overridden by the later line below
    record("accepted", "accept", "electronics"),
    record("kept", "keep", "fashion"),
    record("relabelled", "relabel", "toys"),
    record("removed", "remove", None),
]


def hash_tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def v1(tmp_path: Path) -> Path:
    return make_v1(tmp_path)


@pytest.fixture
def decisions(tmp_path: Path) -> Path:
    return write_decisions(tmp_path / "reviews" / "decisions.jsonl", STANDARD_DECISIONS)


def test_apply_counts(v1, decisions, tmp_path):
    stats = apply.run_apply(v1, decisions, tmp_path / "processed" / "v2")

    assert stats["rows"] == 6
    assert stats["images"] == 4
    assert stats["images_linked"] + stats["images_copied"] == 4
    assert stats["label_source"] == {"original": 2, "corrected": 2, "removed": 1}
    assert stats["decisions"] == {"accept": 1, "keep": 1, "relabel": 1, "remove": 1}
    assert stats["decisions_for_unknown_keys"] == 0
    assert stats["images_per_label"] == {"electronics": 1, "fashion": 2, "toys": 1}


def test_apply_manifest_rows(v1, decisions, tmp_path):
    v2 = tmp_path / "processed" / "v2"
    apply.run_apply(v1, decisions, v2)
    table = pq.read_table(v2 / "manifest.parquet")
    rows = {row["key"]: row for row in table.to_pylist()}

    assert table.column_names == pq.read_table(v1 / "manifest.parquet").column_names + [
        "original_label",
        "label_source",
    ]
    expected = {
        "accepted": ("electronics", "corrected", "ok"),
        "kept": ("fashion", "original", "ok"),
        "relabelled": ("toys", "corrected", "ok"),
        "removed": ("fashion", "removed", "removed_by_review"),
        "untouched": ("fashion", "original", "ok"),
        "failed": ("fashion", "original", "http_error"),
    }
    for name, (label, source, status) in expected.items():
        row = rows[KEYS[name]]
        assert (row["label"], row["label_source"], row["status"]) == (label, source, status), name
        assert row["original_label"] == "fashion"
    assert rows[KEYS["removed"]]["path"] is None
    assert rows[KEYS["accepted"]]["path"] == f"images/electronics/{KEYS['accepted']}.jpg"


def test_apply_image_folders(v1, decisions, tmp_path):
    v2 = tmp_path / "processed" / "v2"
    apply.run_apply(v1, decisions, v2)

    images = sorted(str(path.relative_to(v2)) for path in (v2 / "images").rglob("*.jpg"))
    assert images == sorted(
        [
            f"images/electronics/{KEYS['accepted']}.jpg",
            f"images/fashion/{KEYS['kept']}.jpg",
            f"images/toys/{KEYS['relabelled']}.jpg",
            f"images/fashion/{KEYS['untouched']}.jpg",
        ]
    )
    moved = v2 / "images" / "toys" / f"{KEYS['relabelled']}.jpg"
    assert moved.read_bytes() == b"\xff\xd8 jpeg " + KEYS["relabelled"].encode()


def test_apply_hard_links_images(v1, decisions, tmp_path):
    v2 = tmp_path / "processed" / "v2"
    stats = apply.run_apply(v1, decisions, v2)

    source = v1 / "images" / "fashion" / f"{KEYS['accepted']}.jpg"
    target = v2 / "images" / "electronics" / f"{KEYS['accepted']}.jpg"
    assert stats["images_linked"] == 4  # v1 and v2 share tmp_path's file system
    assert os.stat(source).st_ino == os.stat(target).st_ino


def test_apply_copies_when_links_fail(v1, decisions, tmp_path, monkeypatch):
    def cross_device(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(apply.os, "link", cross_device)
    v2 = tmp_path / "processed" / "v2"
    stats = apply.run_apply(v1, decisions, v2)

    source = v1 / "images" / "fashion" / f"{KEYS['kept']}.jpg"
    target = v2 / "images" / "fashion" / f"{KEYS['kept']}.jpg"
    assert stats["images_copied"] == 4
    assert stats["images_linked"] == 0
    assert os.stat(source).st_ino != os.stat(target).st_ino
    assert target.read_bytes() == source.read_bytes()


def test_apply_leaves_v1_unchanged(v1, decisions, tmp_path):
    before = hash_tree(v1)
    apply.run_apply(v1, decisions, tmp_path / "processed" / "v2")

    assert hash_tree(v1) == before


def test_apply_labels_and_stats_files(v1, decisions, tmp_path):
    v2 = tmp_path / "processed" / "v2"
    apply.run_apply(v1, decisions, v2)

    labels = json.loads((v2 / "labels.json").read_text())
    assert [entry["label"] for entry in labels] == LABELS
    assert labels[0] == {"label": "fashion", "name": "Fashion", "rows": 1, "images": 2}
    assert labels[2]["images"] == 1
    stats = json.loads((v2 / "stats" / "apply.json").read_text())
    assert stats["stage"] == "apply"
    assert stats["images"] == 4
    assert not (v2 / "stats" / "fetch.json").exists()


def test_apply_unknown_keys_warned(v1, tmp_path, caplog):
    path = write_decisions(
        tmp_path / "decisions.jsonl",
        [record("kept", "keep", "fashion"), {"key": "ffffffffffffffff", "decision": "remove"}],
    )
    stats = apply.run_apply(v1, path, tmp_path / "processed" / "v2")

    assert stats["decisions_for_unknown_keys"] == 1
    assert "ffffffffffffffff" in caplog.text


def test_apply_decision_for_failed_row_ignored(v1, tmp_path):
    path = write_decisions(tmp_path / "decisions.jsonl", [record("failed", "relabel", "toys")])
    v2 = tmp_path / "processed" / "v2"
    stats = apply.run_apply(v1, path, v2)

    rows = {row["key"]: row for row in pq.read_table(v2 / "manifest.parquet").to_pylist()}
    assert stats["decisions_for_rows_without_image"] == 1
    assert rows[KEYS["failed"]]["label"] == "fashion"


@pytest.mark.parametrize(
    "bad, message",
    [
        (record("kept", "relabel", "cars"), "new_label for key '00000000000000b2'"),
        (record("kept", "accept", None), "received None"),
        (record("kept", "delete", None), "must be one of"),
    ],
)
def test_apply_invalid_decision_before_work(v1, tmp_path, bad, message):
    path = write_decisions(tmp_path / "decisions.jsonl", [bad])
    v2 = tmp_path / "processed" / "v2"

    with pytest.raises(apply.ApplyError, match=message):
        apply.run_apply(v1, path, v2)
    assert not v2.exists()
    assert list((tmp_path / "processed").iterdir()) == [v1]


def test_apply_existing_out_needs_force(v1, decisions, tmp_path):
    v2 = tmp_path / "processed" / "v2"
    v2.mkdir()
    (v2 / "old.txt").write_text("old")

    with pytest.raises(apply.ApplyError, match="--force"):
        apply.run_apply(v1, decisions, v2)
    assert (v2 / "old.txt").read_text() == "old"

    apply.run_apply(v1, decisions, v2, force=True)
    assert not (v2 / "old.txt").exists()
    assert (v2 / "manifest.parquet").is_file()
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["v1", "v2"]


def test_apply_failure_midway_leaves_no_out(v1, decisions, tmp_path, monkeypatch):
    real_link = apply.link_or_copy
    calls = []

    def failing_link(source, target):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_link(source, target)

    monkeypatch.setattr(apply, "link_or_copy", failing_link)
    v2 = tmp_path / "processed" / "v2"

    with pytest.raises(OSError, match="No space left"):
        apply.run_apply(v1, decisions, v2)
    assert len(calls) == 3
    assert not v2.exists()
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["v1"]


def test_apply_failure_keeps_old_out_with_force(v1, decisions, tmp_path, monkeypatch):
    v2 = tmp_path / "processed" / "v2"
    apply.run_apply(v1, decisions, v2)
    before = hash_tree(v2)

    def failing_stats(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(apply, "write_stats", failing_stats)
    with pytest.raises(RuntimeError):
        apply.run_apply(v1, decisions, v2, force=True)
    assert hash_tree(v2) == before
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["v1", "v2"]


def test_apply_rejects_uncompacted_manifest(v1, decisions, tmp_path):
    (v1 / "manifest.parts").mkdir()
    (v1 / "manifest.parts" / "part-1.parquet").write_bytes(b"")

    with pytest.raises(apply.ApplyError, match="not yet compacted"):
        apply.run_apply(v1, decisions, tmp_path / "processed" / "v2")


def test_apply_main_exit_codes(v1, decisions, tmp_path):
    v2 = tmp_path / "processed" / "v2"
    args = ["--processed-dir", str(v1), "--decisions", str(decisions), "--out", str(v2)]

    assert apply.main(args) == 0
    assert apply.main(args) == 2
    assert apply.main(args + ["--force"]) == 0
    assert (
        apply.main(["--processed-dir", str(v1), "--decisions", str(decisions), "--out", str(v1)])
        == 2
    )


def test_apply_removes_stale_temporary_dir(v1, decisions, tmp_path):
    dead_pid = 2**22 + 1  # Linux caps pid_max at 2**22, so no process has this id
    stale = tmp_path / "processed" / f".v2.tmp-{dead_pid}"
    (stale / "images").mkdir(parents=True)
    live = tmp_path / "processed" / f".v2.tmp-{os.getppid()}"
    live.mkdir()

    apply.run_apply(v1, decisions, tmp_path / "processed" / "v2")

    assert not stale.exists()
    assert live.exists()


def test_apply_killed_run_leaves_no_out(v1, decisions, tmp_path):
    v2 = tmp_path / "processed" / "v2"
    script = (
        "import os, signal, sys\n"
        "from label import apply\n"
        "def die(*args):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "apply.write_labels = die\n"
        f"apply.run_apply(apply.Path({str(v1)!r}), apply.Path({str(decisions)!r}), "
        f"apply.Path({str(v2)!r}))\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, timeout=60
    )

    assert process.returncode == -signal.SIGKILL, process.stderr
    assert not v2.exists()
    leftovers = [p.name for p in (tmp_path / "processed").iterdir() if p.name != "v1"]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".v2.tmp-")
    apply.run_apply(v1, decisions, v2)
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == ["v1", "v2"]


@pytest.mark.parametrize("where", ["inside", "above", "images"])
def test_apply_out_must_be_beside_source(v1, decisions, where):
    out = {"inside": v1 / "v2", "above": v1.parent, "images": v1 / "images"}[where]
    before = hash_tree(v1)

    with pytest.raises(apply.ApplyError, match="beside --processed-dir"):
        apply.run_apply(v1, decisions, out, force=True)
    assert hash_tree(v1) == before
