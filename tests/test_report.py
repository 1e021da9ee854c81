"""
The HTML reports (evaluation/report.py) opened in a real browser, headless Chromium driven by playwright (scripts/screenshot.py's
open_page): an evaluation's report, a predict.py report, a sweep's report, and the demo's reports where
`bash scripts/demo.sh` has made them (CI runs it first). Each page must load from the file system with no console
error, no failed request and no request outside the file system; every image must load; every test image must be
in the gallery; the metrics shown must be results.json's; the sweep's links must lead to loaded category reports.
Skipped, with the reason, where playwright or Chromium is missing.

Run: python -m pytest -q -m slow tests/test_report.py   (slow: the whole suite runs it, the default run does not)
"""

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest

from conftest import ROOT, SMALL, run_main
from screenshot import find_chromium, open_page

pytest.importorskip("playwright", reason="playwright is not installed (pip install -r requirements-dev.txt)")
pytestmark = [pytest.mark.skipif(find_chromium() is None, reason="no Chromium (apt-get install chromium, or set CHROMIUM=/path)"),
              pytest.mark.slow]  # a browser per page

CATEGORY = "stripes"
DEMO = os.path.join(ROOT, "runs", "demo")


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def loaded_page(page, problems, path):
    """The checks every report passes: no problem while loading, every image decoded, every link to an existing file."""
    assert problems == [], path
    broken = page.eval_on_selector_all("img", "images => images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    assert broken == [], path
    folder = os.path.dirname(path)
    for href in page.eval_on_selector_all("a", "links => links.map(a => a.getAttribute('href'))"):
        if href.startswith("#"):
            assert page.query_selector(href), f"{path}: link {href} leads nowhere"
        else:
            assert os.path.isfile(os.path.join(folder, href)), f"{path}: link {href} leads nowhere"


def gallery(page):
    """{path: score} of the gallery's pictures, in their order, and their classes."""
    items = page.eval_on_selector_all("figure", "figures => figures.map(f => [f.dataset.path, Number(f.dataset.score), f.className])")
    return {p: s for p, s, _ in items}, [c for _, _, c in items]


def check_evaluation_report(path):
    """An evaluation's report.html against the results.json and scores.csv beside it."""
    folder = os.path.dirname(path)
    results = json.load(open(os.path.join(folder, "results.json")))
    scores = {row["path"]: float(row["score"]) for row in read_csv(os.path.join(folder, "scores.csv"))}
    with open_page(path) as (page, problems):
        loaded_page(page, problems, path)
        assert page.eval_on_selector_all("figure img", "images => images.length") == len(scores)
        shown = dict(page.eval_on_selector_all("td[data-metric]", "cells => cells.map(c => [c.dataset.metric, c.textContent])"))
        pictures, classes = gallery(page)
        threshold = float(page.get_attribute("[data-threshold]", "data-threshold"))
        text = page.inner_text("body")
    for name in ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_ap", "pixel_f1", "pixel_aupro", "pixel_pro_paper"):
        value = results[name]
        assert shown[name] == (f"{value:.4f}" if value is not None else "n/a"), name
    assert sorted(pictures) == sorted(scores)  # every test image, once
    assert all(abs(pictures[p] - scores[p]) < 1e-6 for p in scores)  # scores.csv rounds to 6 decimals
    labels = {p: p.split("/")[-2] != "good" for p in scores}
    mistakes = [c for c in classes if c in ("missed", "false_alarm")]
    assert classes[:len(mistakes)] == sorted(mistakes, key=["missed", "false_alarm"].index)  # mistakes first, missed first
    assert len(mistakes) == sum(labels[p] != (s >= threshold) for p, s in pictures.items())
    return results, threshold, text


def test_evaluation_report(evaluated, data_root):
    run, result = evaluated
    path = str(run / CATEGORY / "report.html")
    assert f"wrote {path} in " in result.stdout  # and its time
    results, threshold, text = check_evaluation_report(path)
    n_test = sum(len(files) for _, _, files in os.walk(os.path.join(data_root, CATEGORY, "test")))
    assert results["n_images"] == n_test
    assert threshold == results["image_f1_threshold"] and "image_f1_threshold of results.json" in text
    assert "no loss.csv" not in text
    curves = json.load(open(run / CATEGORY / "curves.json"))
    assert abs(np.trapezoid(curves["image_roc"]["tpr"], curves["image_roc"]["fpr"]) - results["image_auroc"]) < 1e-9
    assert len(curves["pixel_pro"]["fpr"]) <= 300 and curves["pixel_pro"]["fpr"][-1] == 0.3


def test_evaluation_report_without_loss_file(trained, tmp_path):
    """A checkpoint without loss.csv beside it: the report says so, and --report=0 writes none."""
    _, checkpoint = trained
    os.link(checkpoint, tmp_path / "checkpoint.pth")
    run_main("test.py", f"--checkpoint={tmp_path / 'checkpoint.pth'}", f"--out_dir={tmp_path}", "--device=cpu", check=True)
    with open_page(tmp_path / CATEGORY / "report.html") as (page, problems):
        loaded_page(page, problems, str(tmp_path / CATEGORY / "report.html"))
        assert "no loss.csv beside the checkpoint" in page.inner_text("body")
    shutil.rmtree(tmp_path / CATEGORY)
    run_main("test.py", f"--checkpoint={tmp_path / 'checkpoint.pth'}", f"--out_dir={tmp_path}", "--device=cpu", "--report=0", check=True)
    assert (tmp_path / CATEGORY / "results.json").exists() and not (tmp_path / CATEGORY / "report.html").exists()


def test_images_report(evaluated, new_images):
    """predict.py: the gallery of the scored folder, with the labels and where the threshold comes from."""
    run, _ = evaluated
    result = run_main("predict.py", f"--checkpoint={run / 'checkpoint.pth'}", f"--out_dir={run}", f"--images={new_images}", "--device=cpu",
                      check=True)
    path = run / CATEGORY / "predict" / "report.html"
    assert f"wrote {path} in " in result.stdout
    rows = read_csv(run / CATEGORY / "predict" / "scores.csv")
    with open_page(path) as (page, problems):
        loaded_page(page, problems, str(path))
        pictures, classes = gallery(page)
        text = page.inner_text("body")
        threshold = float(page.get_attribute("[data-threshold]", "data-threshold"))
    assert list(pictures) == sorted((row["path"] for row in rows), key=lambda p: -pictures[p])  # every image, by score
    assert classes == ["anomalous" if row["label"] == "1" else "normal" for row in sorted(rows, key=lambda r: -pictures[r["path"]])]
    results = json.load(open(run / CATEGORY / "results.json"))
    assert threshold == results["image_f1_threshold"] and "Source: image_f1_threshold of results.json" in text
    assert f"{sum(row['label'] == '1' for row in rows)} of {len(rows)} images anomalous" in text


def test_sweep_report(evaluated, data_root):
    """The sweep's report.html (here rebuilt by --table_only=1): its category cells link to the category's report."""
    run, _ = evaluated
    run_main("scripts/sweep.py", "--table_only=1", f"--out_dir={run}", f"--data_root={data_root}", f"--categories={CATEGORY}",
             *SMALL, "--epochs=2", "--batch_size=4", check=True)
    check_sweep_report(str(run / "report.html"), [CATEGORY])


def check_sweep_report(path, categories):
    with open_page(path) as (page, problems):
        loaded_page(page, problems, path)
        links = [tuple(link) for link in page.eval_on_selector_all("td a", "links => links.map(a => [a.getAttribute('href'), a.textContent])")]
        text = page.inner_text("body")
    results_md = open(os.path.join(os.path.dirname(path), "results.md")).read()
    assert {href for href, _ in links} == {f"{c}/report.html" for c in categories}
    for category in categories:
        results = json.load(open(os.path.join(os.path.dirname(path), category, "results.json")))
        assert (f"{category}/report.html", f"{results['image_auroc']:.3f}") in links  # the metric cells link
        assert f"{results['image_auroc']:.3f}" in results_md
        # a link resolves to the category's report, which loads
        check_evaluation_report(os.path.join(os.path.dirname(path), category, "report.html"))
    assert "Image-Level AUC" in text


def test_demo_reports():
    """The demo's reports (CI runs bash scripts/demo.sh before the tests)."""
    path = os.path.join(DEMO, "report.html")
    if not os.path.isfile(path):
        pytest.skip(f"no {path}: run bash scripts/demo.sh first")
    categories = [c for c in ("stripes", "disc", "grid_gray") if os.path.isfile(os.path.join(DEMO, c, "report.html"))]
    assert categories == ["stripes", "disc", "grid_gray"]
    check_sweep_report(path, categories)


def test_report_size_bound():
    """MVTec AD's largest test set (pill: 167 images at 256x256) gives a report under 30 MB even when every picture
    is pure noise, the worst case for JPEG; a photograph takes about a third of that (evaluation/report.py's docstring)."""
    from evaluation.report import JPEG_QUALITY, THUMB_HEIGHT
    from evaluation.visualize import evaluation_strip

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 256, 256), dtype=np.uint8)
    mask = np.zeros((256, 256), dtype=bool)
    mask[100:140, 90:160] = True
    strip = evaluation_strip(image, mask, rng.random((256, 256)), 0.5, (0.0, 1.0), 0.4)
    sizes = []
    for picture in (strip, strip.resize((strip.width * THUMB_HEIGHT // strip.height, THUMB_HEIGHT))):
        data = io.BytesIO()
        picture.save(data, format="JPEG", quality=JPEG_QUALITY)
        sizes.append(len(data.getvalue()))
    plots = 200_000  # curves, scores and loss PNGs: about 100 kB on the demo
    assert 167 * sum(sizes) + plots < 30e6, sizes
