"""Tests of the visualise plots and the HTML report on outputs of the real stage modules.

Two fixture folders are built by running the stages themselves on generated inputs:

* ``prepared``: extract, merge and relabel of a small CSV file (fast), the state of a
  project where only data preparation has run;
* ``pipeline`` (slow, 60 to 110 s measured on two shared CPU cores): every stage. A
  local aiohttp server serves colour-coded images, then extract, merge, relabel,
  validate, fetch, train and evaluate (ResNet50V2, random weights, 32 px, with one
  fine-tuning epoch), find-label-issues (2 folds), three review decisions and
  apply-corrections run on them.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from data.scripts import extract, merge, relabel, validate
from data.scripts.fetch import FetchOptions, run_fetch
from data.scripts.httpclient import HttpConfig
from data.scripts.images import ImageCheckConfig
from tests.fault_server import FaultServer
from tests.helpers import REPO_ROOT, product_row, write_csv
from visualise import collection, corrections, preparation, report, style, training

# Main category -> (label, BGR colour of its images). Two categories share a label.
CATEGORIES = {
    "tv, audio & cameras": ("electronics_and_appliances", (255, 60, 0)),
    "women's clothing": ("fashion", (0, 200, 0)),
    "home & kitchen": ("household_essentials", (0, 0, 255)),
    "grocery & gourmet foods": ("household_essentials", (0, 0, 255)),
}
IMAGES_PER_CATEGORY = {"tv, audio & cameras": 20, "women's clothing": 20}
IMAGES_PER_CATEGORY |= {"home & kitchen": 12, "grocery & gourmet foods": 8}
HTTP = HttpConfig(
    concurrency=8,
    per_host=8,
    request_timeout=10,
    max_attempts=1,
    backoff_base=0.01,
    allowed_networks=("127.0.0.1/32",),
)
# NOTE: mobilenetv3_pool would be faster, but train.models.split_model does not find its
# backbone (StopIteration), so training it fails.
MODEL = "resnet50v2_pool"
PREPARATION_PLOTS = ["preparation_flow", "categories_and_labels"]
ALL_PLOTS = PREPARATION_PLOTS + [
    "download_outcomes",
    "image_sizes",
    "sample_images",
    "training_curves",
    "confusion_matrix",
    "confident_mistakes",
    "label_review",
]


def make_jpeg(seed: int, colour: tuple[int, int, int]) -> bytes:
    """A JPEG of varying size: the category's colour as a rectangle on dark noise."""
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(48, 120, 2))
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    x, y = int(rng.integers(0, width // 3)), int(rng.integers(0, height // 3))
    cv2.rectangle(image, (x, y), (x + width // 2, y + height // 2), colour, -1)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def catalogue_rows(server: FaultServer | None) -> list[str]:
    """CSV lines of every category's images plus rows that each stage drops or fails."""
    base = server.url("") if server else "http://127.0.0.1:9/"
    lines = []
    seed = 0
    for category, count in IMAGES_PER_CATEGORY.items():
        _, colour = CATEGORIES[category]
        for _ in range(count):
            name = f"p{seed}.jpg"
            if server:
                server.add_image(name, make_jpeg(seed, colour))
            lines.append(
                product_row(
                    name=f"Item {seed}",
                    main_category=f'"{category}"',  # quoted: it may contain a comma
                    image=f"{base.rstrip('/')}/img/{name}",
                )
            )
            seed += 1
    first_url = f"{base.rstrip('/')}/img/p0.jpg"
    lines += [
        # the same photo listed again under a category of another label
        product_row(name="Again", main_category="women's clothing", image=first_url),
        product_row(name="Again 2", main_category='"tv, audio & cameras"', image=first_url),
        product_row(name="No image", main_category="home & kitchen", image=""),
        product_row(name="Relative", main_category="home & kitchen", image="/images/x.jpg"),
        product_row(
            name="Gone", main_category="home & kitchen", image=f"{base.rstrip('/')}/status/404"
        ),
        product_row(name="Page", main_category="home & kitchen", image=f"{base.rstrip('/')}/html"),
        "Broken row,home & kitchen",  # too few fields: rejected by extract
    ]
    return lines


def prepare(raw: Path, out: Path) -> None:
    extract.run_extract(raw, out)
    merge.run_merge(out)
    relabel.run_relabel(out, relabel.DEFAULT_MAPPING)


def run_module(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A processed folder after extract, merge and relabel only."""
    root = tmp_path_factory.mktemp("prepared")
    write_csv(root / "raw" / "Catalogue.csv", catalogue_rows(None))
    prepare(root / "raw", root / "v1")
    return root / "v1"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every stage's output: processed, runs, review and the applied version."""
    from label.apply import run_apply
    from label.find_issues import FindIssuesConfig, find_issues
    from label.review import DecisionLog, load_candidates, load_labels, make_decision

    root = tmp_path_factory.mktemp("pipeline")
    server = FaultServer().start()
    try:
        write_csv(root / "raw" / "Catalogue.csv", catalogue_rows(server))
        processed = root / "v1"
        prepare(root / "raw", processed)
        validate.run_validate(processed, HTTP)
        run_fetch(
            FetchOptions(
                processed_dir=processed,
                input_path=processed / "products.parquet",
                http=HTTP,
                image=ImageCheckConfig(),
            )
        )
    finally:
        server.stop()

    runs = root / "runs"
    trained = run_module(
        "train.train",
        "--processed-dir",
        str(processed),
        "--runs-dir",
        str(runs),
        "--model",
        MODEL,
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--fine-tune-epochs",
        "1",
        "--batch-size",
        "16",
    )
    run = Path(next(line for line in trained.stdout.splitlines() if line.startswith("RUN="))[4:])
    run_module("train.evaluate", "--run", str(run))

    review = root / "review"
    find_issues(
        FindIssuesConfig(
            processed_dir=processed,
            model=MODEL,
            weights="none",
            image_size=32,
            folds=2,
            epochs=2,
            out=review / "candidates.csv",
        )
    )
    candidates = load_candidates(review / "candidates.csv")
    labels = load_labels(candidates, processed)
    log = DecisionLog(review / "decisions.jsonl")
    for candidate, decision in zip(candidates, ("accept", "remove", "keep")):
        log.append(make_decision(candidate, decision, None, labels))
    run_apply(processed, review / "decisions.jsonl", root / "v2")
    return {"processed": processed, "runs": runs, "run": run, "review": review, "v2": root / "v2"}


def assert_valid_png(path: Path) -> np.ndarray:
    """Check that ``path`` is a PNG that OpenCV decodes, of a sane size and not blank."""
    data = path.read_bytes()
    assert data.startswith(report.PNG_SIGNATURE), path
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, path
    height, width = image.shape[:2]
    assert 200 <= width <= 2000, (path, image.shape)
    assert 150 <= height <= 3000, (path, image.shape)
    assert image.var() > 0, path
    assert (image < 250).any(axis=2).mean() > 0.01, f"{path} is almost all white"
    return image


def write_report(out: Path, processed: Path, runs: Path, review: Path, *extra: str) -> int:
    return report.main(
        [
            "--processed-dir",
            str(processed),
            "--runs-dir",
            str(runs),
            "--review-dir",
            str(review),
            "--out",
            str(out),
            *extra,
        ]
    )


def embedded_images(page: str) -> list[np.ndarray]:
    """Decode every data-URI image of the page; fail on any other image source."""
    sources = re.findall(r'src="([^"]*)"', page)
    images = []
    for source in sources:
        assert source.startswith("data:image/png;base64,"), source[:80]
        data = base64.b64decode(source.removeprefix("data:image/png;base64,"), validate=True)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        images.append(image)
    return images


# ---- missing inputs ----


@pytest.mark.parametrize(
    ("plot", "target"),
    [
        (preparation.plot_preparation_flow, "extract"),
        (preparation.plot_categories, "merge"),
        (collection.plot_download_outcomes, "fetch"),
        (collection.plot_image_sizes, "fetch"),
        (collection.plot_contact_sheet, "fetch"),
        (training.plot_training_curves, "train"),
        (training.plot_confusion, "evaluate"),
        (training.plot_mistakes, "evaluate"),
        (corrections.plot_review, "find-label-issues"),
    ],
)
def test_plot_missing_input_names_target(plot, target, tmp_path):
    result = plot(tmp_path / "nothing", tmp_path / "out")

    assert result.path is None
    assert result.missing
    assert result.note.startswith(f"missing: run `make {target}")
    assert not list(tmp_path.rglob("*.png"))


def test_report_on_empty_folder_marks_every_stage(tmp_path):
    empty = tmp_path / "processed"
    empty.mkdir()

    code = write_report(tmp_path / "out", empty, tmp_path / "runs", tmp_path / "review")
    page = (tmp_path / "out" / "index.html").read_text()

    assert code == 0
    assert page.count('class="note not-run"') == 4
    for target in ("make prepare", "make fetch", "make train", "make find-label-issues"):
        assert f"Not run yet: run <code>{target}</code> first" in page
    assert embedded_images(page) == []
    assert not list((tmp_path / "out").glob("*.png"))


def html_text(page: str) -> str:
    """The page with HTML entities decoded, as a reader sees the text."""
    return html.unescape(page)


def test_make_report_on_empty_folder_exits_0(tmp_path):
    empty = tmp_path / "processed"
    empty.mkdir()
    out = tmp_path / "report"

    result = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "report",
            f"PROCESSED_DIR={empty}",
            f"RUNS_DIR={tmp_path / 'runs'}",
            f"REVIEW_DIR={tmp_path / 'review'}",
            f"REPORT_DIR={out}",
            # a data version that does not exist, so no applied version of the checkout counts
            "NEW_DATA_VERSION=no-such-version-for-the-report-test",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert "no stage has written anything yet" in result.stderr
    assert "run `make prepare` first" in result.stderr
    assert (out / "index.html").is_file()


def test_invalid_run_option_exits_2(tmp_path, caplog):
    code = write_report(
        tmp_path / "out", tmp_path, tmp_path, tmp_path, "--run", str(tmp_path / "no-run")
    )

    assert code == 2
    assert "is not a run folder" in caplog.text
    assert not (tmp_path / "out" / "index.html").exists()


# ---- after preparation only ----


def test_preparation_plots_valid(prepared, tmp_path):
    flow = preparation.plot_preparation_flow(prepared, tmp_path)
    categories = preparation.plot_categories(prepared, tmp_path)

    assert flow.path == tmp_path / "preparation_flow.png"
    assert categories.path == tmp_path / "categories_and_labels.png"
    assert_valid_png(flow.path)
    assert_valid_png(categories.path)


def test_preparation_flow_counts_every_drop(prepared):
    stats = preparation.read_stage_stats(prepared)
    steps = {text: rows for text, rows, _ in preparation.flow_steps(stats)}

    assert steps["CSV rows read"] == sum(IMAGES_PER_CATEGORY.values()) + 7
    assert steps["rejected by extract: too_few_fields"] == 1
    assert steps["no usable URL: missing_url"] == 1
    assert steps["no usable URL: relative_url"] == 1
    assert steps["duplicate rows dropped"] == 2
    assert steps["labelled rows (products.parquet)"] == sum(IMAGES_PER_CATEGORY.values()) + 2


def test_rows_before_dedupe_per_category(prepared):
    before = preparation.rows_before_dedupe(prepared)
    after = json.loads((prepared / "stats" / "merge.json").read_text())["rows_per_main_category"]

    assert before["women's clothing"] == IMAGES_PER_CATEGORY["women's clothing"] + 1
    assert after["women's clothing"] == IMAGES_PER_CATEGORY["women's clothing"]
    assert before["home & kitchen"] == IMAGES_PER_CATEGORY["home & kitchen"] + 4


def test_partial_report_notes_later_stages(prepared, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "training_curves.png").write_bytes(b"left by an earlier report")

    code = write_report(out, prepared, tmp_path / "runs", tmp_path / "review")
    page = html_text((out / "index.html").read_text())

    assert code == 0
    assert "Not run yet: run <code>make fetch</code> first" in page
    assert "Not run yet: run <code>make train</code> first" in page
    assert "Not run yet: run <code>make find-label-issues</code> first" in page
    assert "Not run yet: run <code>make prepare</code>" not in page
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(PREPARATION_PLOTS)
    assert len(embedded_images(page)) == len(PREPARATION_PLOTS)


def test_partial_report_shows_key_counts(prepared, tmp_path):
    write_report(tmp_path, prepared, tmp_path / "runs", tmp_path / "review")
    page = html_text((tmp_path / "index.html").read_text())
    rows = dict(preparation.summary_rows(prepared))

    assert rows["CSV rows read"] == sum(IMAGES_PER_CATEGORY.values()) + 7
    assert rows["duplicate rows dropped"] == 2
    assert rows["URLs under conflicting main categories"] == 1
    for name in ("CSV rows read", "duplicate rows dropped", "unique URLs kept"):
        assert re.search(rf"<td>{name}</td><td>{rows[name]:,}</td>", page), name


def test_damaged_stats_file_gives_note(prepared, tmp_path):
    damaged = tmp_path / "v1"
    shutil.copytree(prepared, damaged)
    (damaged / "stats" / "merge.json").write_text("{ not json")

    code = write_report(tmp_path / "out", damaged, tmp_path / "runs", tmp_path / "review")
    page = html_text((tmp_path / "out" / "index.html").read_text())

    assert code == 0
    assert '<div class="note failed">' in page
    assert f"{damaged / 'stats' / 'merge.json'} is not valid JSON" in page
    assert "Data preparation</a> (could not be read)" in page
    assert "Not run yet: run <code>make fetch</code> first" in page


def test_cjk_font_added_as_fallback(monkeypatch):
    monkeypatch.setattr(style, "cjk_font_family", lambda: "Noto Sans CJK JP")

    with matplotlib.rc_context({"font.sans-serif": ["DejaVu Sans", "Arial"]}):
        style.configure_fonts()
        style.configure_fonts()
        fonts = list(matplotlib.rcParams["font.sans-serif"])

    assert fonts == ["DejaVu Sans", "Noto Sans CJK JP", "Arial"]


# ---- unit cases of the training figures on hand-written run folders ----


def write_run(folder: Path, *, evaluated: bool, mtime: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": "m", "image_size": 32}))
    (folder / "class_names.json").write_text(json.dumps(["a", "b"]))
    history = folder / "history.csv"
    history.write_text(
        "phase,global_epoch,epoch,loss,accuracy,val_loss,val_accuracy\n"
        "head,1,0,1.0,0.5,1.1,0.4\nhead,2,1,0.8,0.6,1.0,0.5\n"
    )
    os.utime(history, (mtime, mtime))
    if evaluated:
        metrics = folder / "evaluation" / "metrics.json"
        metrics.parent.mkdir()
        metrics.write_text(json.dumps({"images": 2, "confusion_matrix": [[1, 0], [1, 0]]}))
        os.utime(metrics, (mtime, mtime))
    return folder


def test_default_run_prefers_evaluated(tmp_path):
    old_evaluated = write_run(tmp_path / "a", evaluated=True, mtime=1_000_000)
    write_run(tmp_path / "b", evaluated=False, mtime=2_000_000)

    assert training.default_run(tmp_path) == old_evaluated


def test_default_run_newest_without_evaluation(tmp_path):
    write_run(tmp_path / "a", evaluated=False, mtime=1_000_000)
    newest = write_run(tmp_path / "b", evaluated=False, mtime=2_000_000)

    assert training.default_run(tmp_path) == newest
    assert training.default_run(tmp_path / "missing") is None


def test_curves_from_phase_files_of_running_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history-head.csv").write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy\n" "0,1.0,0.5,1.1,0.4\n1,0.8,0.6,1.0,0.5\n"
    )
    (run / "history-fine_tune.csv").write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy\n" "0,0.7,0.7,0.9,0.6\n"
    )

    history = training.read_history(run)
    plot = training.plot_training_curves(run, tmp_path / "out")

    assert history["global_epoch"].tolist() == [1, 2, 3]
    assert history["phase"].tolist() == ["head", "head", "fine_tune"]
    assert_valid_png(plot.path)


def test_mistakes_without_images_use_placeholders(tmp_path):
    run = write_run(tmp_path / "run", evaluated=True, mtime=1_000_000)
    (run / "evaluation" / "misclassified.csv").write_text(
        "key,path,label,predicted,confidence\n"
        "k1,images/a/k1.jpg,a,b,0.9\nk2,images/b/k2.jpg,b,a,0.8\n"
    )

    plot = training.plot_mistakes(run, tmp_path / "out")

    assert_valid_png(plot.path)
    assert "grey squares" in plot.caption


def test_mistakes_show_run_images(tmp_path):
    run = write_run(tmp_path / "run", evaluated=True, mtime=1_000_000)
    root = tmp_path / "processed"
    (root / "images" / "a").mkdir(parents=True)
    blue = np.zeros((60, 80, 3), np.uint8)
    blue[:] = (255, 0, 0)
    cv2.imwrite(str(root / "images" / "a" / "k1.png"), blue)
    (run / "evaluation" / "misclassified.csv").write_text(
        "key,path,label,predicted,confidence\nk1,images/a/k1.png,a,b,0.9\n"
    )

    plot = training.plot_mistakes(run, tmp_path / "out", processed_dir=root)
    image = assert_valid_png(plot.path)

    pure_blue = (image[..., 0] > 200) & (image[..., 1] < 50) & (image[..., 2] < 50)
    assert pure_blue.mean() > 0.05
    assert "grey squares" not in plot.caption


def test_no_mistakes_gives_note(tmp_path):
    run = write_run(tmp_path / "run", evaluated=True, mtime=1_000_000)
    (run / "evaluation" / "misclassified.csv").write_text("key,path,label,predicted,confidence\n")

    plot = training.plot_mistakes(run, tmp_path / "out")

    assert plot.path is None
    assert not plot.missing
    assert "no mistakes" in plot.note


# ---- every stage ----


def expected_plots(run: Path) -> list[str]:
    """Every figure, less the mistakes when the run classified its whole test split right.

    The split of an image follows from its URL, which holds the test server's port, so
    which images land in the small test split changes from run to run.
    """
    mistakes = (run / "evaluation" / "misclassified.csv").read_text().strip().splitlines()
    return [name for name in ALL_PLOTS if name != "confident_mistakes" or len(mistakes) > 1]


@pytest.mark.slow
def test_every_plot_drawn_and_valid(pipeline, tmp_path):
    code = write_report(
        tmp_path,
        pipeline["processed"],
        pipeline["runs"],
        pipeline["review"],
        "--applied-dir",
        str(pipeline["v2"]),
    )

    assert code == 0
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(expected_plots(pipeline["run"]))
    for path in tmp_path.glob("*.png"):
        assert_valid_png(path)


@pytest.mark.slow
def test_full_report_embeds_every_figure(pipeline, tmp_path):
    write_report(
        tmp_path,
        pipeline["processed"],
        pipeline["runs"],
        pipeline["review"],
        "--applied-dir",
        str(pipeline["v2"]),
    )
    page = html_text((tmp_path / "index.html").read_text())
    images = embedded_images((tmp_path / "index.html").read_text())

    expected = expected_plots(pipeline["run"])
    assert len(images) == len(expected)
    for name in expected:
        png = cv2.imread(str(tmp_path / f"{name}.png"))
        assert any(image.shape == png.shape and (image == png).all() for image in images), name
    assert "Not run yet" not in page
    if "confident_mistakes" not in expected:
        assert "no mistakes: every test image was classified correctly" in page
    assert not re.findall(r'(?:href|src)="(?!#|data:image/png;base64,)', page)


@pytest.mark.slow
def test_full_report_key_counts(pipeline, tmp_path):
    write_report(
        tmp_path,
        pipeline["processed"],
        pipeline["runs"],
        pipeline["review"],
        "--applied-dir",
        str(pipeline["v2"]),
    )
    page = html_text((tmp_path / "index.html").read_text())
    fetch = json.loads((pipeline["processed"] / "stats" / "fetch.json").read_text())
    metrics = json.loads((pipeline["run"] / "evaluation" / "metrics.json").read_text())
    applied = json.loads((pipeline["v2"] / "stats" / "apply.json").read_text())

    assert fetch["status_counts"]["http_error"] == 1
    assert fetch["status_counts"]["not_an_image"] == 1
    for status, count in fetch["status_counts"].items():
        assert f"<td>  status {status}</td><td>{count:,}</td>" in page, status
    assert f"<td>test accuracy</td><td>{metrics['accuracy']:.3f}</td>" in page
    assert f"<td>  rows removed</td><td>{applied['label_source']['removed']}</td>" in page
    assert f"<td>  rows corrected</td><td>{applied['label_source']['corrected']}</td>" in page
    assert pipeline["run"].name in page


@pytest.mark.slow
def test_download_outcomes_per_status(pipeline, tmp_path):
    manifest = collection.read_manifest_frame(pipeline["processed"])
    plot = collection.plot_download_outcomes(pipeline["processed"], tmp_path)

    assert_valid_png(plot.path)
    assert set(manifest["status"]) >= {"ok", "http_error", "not_an_image"}
    assert set(collection.hosts_of(manifest["url"])) == {"127.0.0.1"}


@pytest.mark.slow
def test_contact_sheet_deterministic(pipeline, tmp_path):
    first = collection.plot_contact_sheet(pipeline["processed"], tmp_path / "a")
    second = collection.plot_contact_sheet(pipeline["processed"], tmp_path / "b")
    images = collection.stored_images(pipeline["processed"])

    assert first.path.read_bytes() == second.path.read_bytes()
    assert sorted(images) == ["electronics_and_appliances", "fashion", "household_essentials"]
    assert all(files == sorted(files) for files in images.values())


@pytest.mark.slow
def test_review_counts_decisions(pipeline):
    candidates = corrections.read_candidates(pipeline["review"])
    per_key = corrections.decisions_per_key(pipeline["review"], candidates)
    counts = per_key["decision"].value_counts()

    assert counts["accept"] == 1
    assert counts["remove"] == 1
    assert counts["keep"] == 1
    assert counts.get(corrections.UNDECIDED, 0) == len(per_key) - 3


@pytest.mark.slow
def test_training_curves_show_both_phases(pipeline):
    history = training.read_history(pipeline["run"])

    assert history["phase"].tolist() == ["head", "head", "fine_tune"]
    assert history["val_accuracy"].notna().all()


def test_applied_version_of_other_data_ignored(tmp_path):
    from visualise.report import applied_from

    ours, other, applied = tmp_path / "v1", tmp_path / "samples", tmp_path / "v2"
    for folder in (ours, other, applied / "stats"):
        folder.mkdir(parents=True)
    (applied / "stats" / "apply.json").write_text(json.dumps({"source": str(other)}))

    assert not applied_from(applied, ours)
    assert applied_from(applied, other)
    assert not applied_from(tmp_path / "missing", ours)


def run_notebook(processed: Path, out: Path) -> list[object]:
    """Run the EDA notebook's code cells in an IPython shell on ``processed``; return results."""
    import nbformat
    from IPython.core.interactiveshell import InteractiveShell

    notebook = nbformat.read(REPO_ROOT / "develop" / "notebooks" / "eda.ipynb", as_version=4)
    shell = InteractiveShell.instance()
    results = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.outputs, "the committed notebook must have its outputs stripped"
        source = cell.source.replace('processed_dir("v1")', f"Path({str(processed)!r})")
        source = re.sub(r"^OUT = .*$", f"OUT = Path({str(out)!r})", source, flags=re.M)
        result = shell.run_cell(source, store_history=False)
        assert result.success, f"cell failed: {source[:200]}\n{result.error_in_exec!r}"
        results.append(result.result)
    return results


def test_notebook_runs_on_prepared_data(prepared, tmp_path):
    results = run_notebook(prepared, tmp_path / "eda")

    assert results[0] == prepared
    assert (tmp_path / "eda" / "preparation_flow.png").exists()
    assert (tmp_path / "eda" / "categories_and_labels.png").exists()
