"""
HTML reports of what the model decided: one per evaluation, one per folder of scored images, one per sweep. A
report opens from the file system, offline (no server, nothing fetched from the network): one HTML file with its
style inline, and its pictures in a folder beside it (plots as PNG, drawn with matplotlib by evaluation/plots.py's
process, image strips as JPEG).

    test.py                  -> <out_dir>/<category>/report.html + report/    (write_evaluation_report)
    predict.py --images=DIR  -> <out_dir>/<category>/predict/report.html + predict/report/   (write_prediction_report)
    scripts/sweep.py         -> <out_dir>/report.html, its tables linking to each category's report (write_sweep_report)

An evaluation report holds: the metrics with one-line definitions; the threshold used and why, with what it gives
on the test set; where and when it ran and the settings the checkpoint was trained with; ROC, precision-recall
and PRO curves at image and pixel level (PRO up to FPR 0.3, the part AUPRO integrates); the image scores per test
folder with the threshold; per defect type its count, image AUROC against the good images and recall at the
threshold; the training loss per epoch (loss.csv beside the checkpoint: epoch,loss,seconds); and the gallery:
every test image as input | ground truth | heatmap with its score, the mistakes at the threshold first (missed
defects, then false alarms), then by score, each thumbnail opening its full-size strip.

Size: a thumbnail is THUMB_HEIGHT pixels high, a full-size strip is the image size high (evaluation/visualize.py's
strips), both JPEG at JPEG_QUALITY. MVTec AD's largest test set (pill, 167 images at 256x256) makes a report of
about 11 MB: a photograph's strip takes about 56 kB full-size and 11 kB as a thumbnail (measured on matplotlib's
sample photograph), plus about 100 kB of plots; even pure noise, the worst case for JPEG, stays under 30 MB
(tests/test_report.py::test_report_size_bound).
"""

import csv
import html
import os
import shutil
import tempfile
from datetime import datetime

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from evaluation.plots import fmt
from evaluation.visualize import evaluation_strip, prediction_strip
from utils.files import UMASK, atomic_write_text

THUMB_HEIGHT = 96  # pixels of a gallery thumbnail (a strip of 3 panels: 288 x 96)
JPEG_QUALITY = 88
FOLDER = "report"  # the pictures' folder beside report.html

METRICS = {  # name: one-line definition, in the order shown
    "image_auroc": "area under the ROC curve of the image scores: the chance that a defective image scores above a good one",
    "image_ap": "average precision of the image scores: area under their precision-recall curve (sklearn's step sum)",
    "image_f1": "best F1 over all thresholds of the image scores (F1-max), reached at image_f1_threshold",
    "image_f1_threshold": "the image score at which F1-max is reached, picked with the test labels",
    "pixel_auroc": "area under the ROC curve of every pixel of every test image against the ground-truth masks",
    "pixel_ap": "average precision of every pixel against the masks",
    "pixel_f1": "best F1 over all thresholds of the pixel scores",
    "pixel_aupro": "area under the per-region overlap (PRO) curve up to a false-positive rate of 0.3, divided by 0.3: "
                   "every defect region counts alike, whatever its size",
    "pixel_aupro_05": "the same PRO curve's area up to a false-positive rate of 0.05, divided by 0.05: MVTec AD 2's AU-PRO_0.05",
    "pixel_pro_paper": "the official RD4AD script's per-image PRO: a different number, not comparable with pixel_aupro",
    "seg_f1": "MVTec AD 2's SegF1: F1 of every test pixel at or above seg_threshold against the masks, pixels pooled",
    "seg_threshold": "MVTec AD 2's segmentation threshold, from defect-free validation images alone (seg_threshold_source)",
}
PROTOCOL_METRICS = ("seg_f1", "seg_threshold")  # shown where the evaluation has them (test.py --protocol=mvtec_ad_2)

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1240px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
td.value { text-align: right; font-variant-numeric: tabular-nums; } .note { color: #555; }
.threshold { background: #f4f4f4; padding: 0.6em 1em; border-left: 4px solid #888; }
.gallery { display: flex; flex-wrap: wrap; gap: 6px; } figure { margin: 0; padding: 3px; border: 2px solid #ddd; }
figure.missed { border-color: #d62728; } figure.false_alarm { border-color: #ff7f0e; }
figcaption { font-size: 12px; max-width: 300px; overflow-wrap: anywhere; } img { display: block; }
"""


def page(title, body):
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def table(header, rows):
    """An HTML table; cells are HTML already (escape text before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    return f"<table><tr>{head}</tr>" + "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows) + "</table>"


def cell(text, cls=None, **data):
    attributes = (f' class="{cls}"' if cls else "") + "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in data.items())
    return f"<td{attributes}>{text}</td>"


# -----------------------------------------------------------------------------
# files

class PictureFolder:
    """The pictures of one report, written into a temporary folder that replaces `<parent>/report/` at the end
    (commit), so that a crash leaves the old pictures or the new ones, never a mix."""

    def __init__(self, parent):
        self.parent, self.final = parent, os.path.join(parent, FOLDER)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(dir=parent, prefix=f".{FOLDER}.", suffix=".tmp")
        self.used = set()

    def name(self, stem):
        """A file stem not used before in this folder."""
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
        unique, i = stem, 1
        while unique in self.used:
            unique, i = f"{stem}_{i}", i + 1
        self.used.add(unique)
        return unique

    def save(self, picture, file_name, **options):
        """Save a PIL image; returns its path relative to the report's folder."""
        picture.save(os.path.join(self.tmp, file_name), **options)
        return f"{FOLDER}/{file_name}"

    def plot(self, plotter, figure, file_name, **args):
        """Ask plotter (evaluation.plots.Plotter) to draw a plot into this folder; returns its path relative to the report's folder."""
        plotter.draw(figure, os.path.join(self.tmp, file_name), **args)
        return f"{FOLDER}/{file_name}"

    def save_strip(self, strip, stem, full=True):
        """The strip as a thumbnail (and, with full, full-size): (thumbnail path, full-size path or None)."""
        stem = self.name(stem)
        height = min(THUMB_HEIGHT, strip.height)
        thumb = strip.resize((round(strip.width * height / strip.height), height), Image.Resampling.BILINEAR)
        thumb_path = self.save(thumb, stem + ".thumb.jpg", quality=JPEG_QUALITY)
        return thumb_path, self.save(strip, stem + ".jpg", quality=JPEG_QUALITY) if full else None

    def commit(self):
        old = None
        if os.path.isdir(self.final):
            old = tempfile.mkdtemp(dir=self.parent, prefix=f".{FOLDER}.", suffix=".old")
            os.replace(self.final, os.path.join(old, FOLDER))
        os.replace(self.tmp, self.final)
        os.chmod(self.final, 0o777 & ~UMASK)  # mkdtemp makes 0700 folders
        if old:
            shutil.rmtree(old)

    def discard(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_loss(path):
    """(epochs, losses) from loss.csv (header epoch,loss,seconds), or (None, why not)."""
    if not os.path.isfile(path):
        return None, f"no loss.csv beside the checkpoint ({path})"
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return ([int(r["epoch"]) for r in rows], [float(r["loss"]) for r in rows]), ""
    except (ValueError, KeyError, TypeError, OSError) as e:
        return None, f"{path}: unreadable ({type(e).__name__}: {e}); expected the header epoch,loss,seconds"


# -----------------------------------------------------------------------------
# the gallery

def gallery_order(labels, scores, threshold):
    """Indices: missed defects, then false alarms (at the threshold), then the others; by score, highest first, within each."""
    def mistake(i):
        if threshold is None:
            return 2
        anomalous = scores[i] >= threshold
        return 0 if labels[i] and not anomalous else 1 if not labels[i] and anomalous else 2
    return sorted(range(len(scores)), key=lambda i: (mistake(i), -scores[i]))


def figure_html(thumb, full, path, caption, kind, score):
    image = f'<img src="{html.escape(thumb)}" alt="{html.escape(path)}">'
    return (f'<figure class="{kind}" data-path="{html.escape(path)}" data-score="{score!r}">'
            f'<a href="{html.escape(full)}">{image}</a><figcaption>{caption}</figcaption></figure>')


def verdict(label, score, threshold):
    """(css class, words) of one image at the threshold; label None for images without one."""
    if threshold is None:
        return "", ""
    anomalous = score >= threshold
    if label is None:
        return ("anomalous" if anomalous else "normal"), ("anomalous" if anomalous else "normal")
    if label and not anomalous:
        return "missed", "missed defect"
    if anomalous and not label:
        return "false_alarm", "false alarm"
    return "correct", "defect found" if label else "good, passed"


# -----------------------------------------------------------------------------
# the reports

def threshold_html(threshold, labels=None, scores=None):
    if threshold.value is None:
        return f'<p class="threshold">No threshold: {html.escape(threshold.source)}.</p>'
    text = (f'<p class="threshold">Threshold <b data-threshold="{threshold.value!r}">{threshold.value:.6f}</b> '
            f"(an image is anomalous when its score is at or above it).<br>Source: {html.escape(threshold.source)}. "
            "Which one is used: --threshold (predict.py) if given, else threshold.json beside the checkpoint "
            "(calibrate.py), else the F1-max threshold of the evaluation.")
    if labels is not None:
        labels, scores = np.asarray(labels, dtype=bool), np.asarray(scores)
        flagged = scores >= threshold.value
        n_good, n_bad = int((~labels).sum()), int(labels.sum())
        text += (f"<br>On this test set: false alarms on <b>{int((flagged & ~labels).sum())} of {n_good}</b> good images, "
                 f"defects caught: <b>{int((flagged & labels).sum())} of {n_bad}</b>.")
    return text + "</p>"


def per_type_rows(types, scores, threshold):
    """Per test folder: count, image AUROC against the good images, recall (or false alarms for good) at the threshold."""
    types, scores = np.asarray(types), np.asarray(scores)
    good = scores[types == "good"]
    rows = []
    for name in ["good"] + sorted(set(types.tolist()) - {"good"}):
        mine = scores[types == name]
        if not mine.size:
            continue
        at = int((mine >= threshold).sum()) if threshold is not None else None
        if name == "good":
            auroc, rate = "", "" if at is None else f"false alarms {at} of {mine.size}"
        else:
            auroc = fmt(roc_auc_score(np.r_[np.zeros(good.size), np.ones(mine.size)], np.r_[good, mine])) if good.size else "n/a"
            rate = "" if at is None else f"{at / mine.size:.3f} ({at} of {mine.size})"
        rows.append([cell(html.escape(name)), cell(str(mine.size), "value"), cell(auroc, "value", type=name), cell(rate, "value")])
    return rows


def write_evaluation_report(folder, results, curves, test_set, maps, scores, *, threshold, loss_csv, plotter):
    """folder/report.html + folder/report/ for an evaluation (test.py). results: results.json's dict; curves:
    evaluation.metrics.metrics_and_curves's; test_set: dataset.load_test_set's (images (N,3,S,S) uint8, masks
    (N,S,S) bool or None, labels (N,) 0/1, paths 'test/<type>/<file>'); maps (N,S,S), scores (N,); threshold:
    threshold.Choice; loss_csv: the path of train.py's loss.csv (it may not exist); plotter: a plots.Plotter, which
    draws the plots while this process draws the gallery. Returns the path of report.html."""
    images, masks, labels, paths = test_set
    labels, scores = np.asarray(labels).astype(int).tolist(), np.asarray(scores, dtype=np.float64).tolist()
    types = [os.path.basename(os.path.dirname(p)) for p in paths]
    pictures = PictureFolder(folder)
    try:
        legends = {name: results.get(name) for name in ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro")}
        curves_png = pictures.plot(plotter, "curves", "curves.png", curves=curves, metrics=legends)
        groups = [(name, [s for s, t in zip(scores, types) if t == name]) for name in ["good"] + sorted(set(types) - {"good"})]
        scores_png = pictures.plot(plotter, "scores", "scores.png", groups=[g for g in groups if g[1]],
                                   threshold=None if threshold.value is None else float(threshold.value))
        loss, loss_problem = read_loss(loss_csv)
        loss_png = pictures.plot(plotter, "loss", "loss.png", epochs=loss[0], losses=loss[1]) if loss else None
        figures = []
        heat_range = results["heatmap_range"]
        for i in gallery_order(labels, scores, threshold.value):
            strip = (prediction_strip(images[i], maps[i], scores[i], heat_range, threshold.value) if masks is None
                     else evaluation_strip(images[i], masks[i], maps[i], scores[i], heat_range, threshold.value))
            thumb, full = pictures.save_strip(strip, f"{types[i]}_{os.path.splitext(os.path.basename(paths[i]))[0]}")
            kind, words = verdict(labels[i], scores[i], threshold.value)
            caption = f"<b>{words}</b> {html.escape(paths[i])}<br>score {scores[i]:.4f}"
            figures.append(figure_html(thumb, full, paths[i], caption, kind, scores[i]))
        plotter.wait()
        pictures.commit()
    except BaseException:
        plotter.answers()  # no plot is still being drawn into the folder removed next
        pictures.discard()
        raise

    metric_rows = [[cell(name), cell(fmt(results.get(name)), "value", metric=name),
                    cell(html.escape(METRICS[name] if results.get(name) is not None
                                     else f"undefined: {results.get('undefined', {}).get(name, '')}"), "note")]
                   for name in METRICS if name not in PROTOCOL_METRICS or name in results]
    train_config = results.get("train_config")
    settings = ([[cell(html.escape(k)), cell(html.escape(str(v)))] for k, v in train_config.items()] if train_config
                else [[cell("official checkpoint"), cell("no training settings are stored in it")]])
    run = [("checkpoint", results["checkpoint"]), ("method", results["method"]), ("backbone", results["backbone"]),
           ("teacher weights", results["weights"]), ("image size", results["image_size"]), ("map_mode", results["map_mode"]),
           ("pixel metrics at", {"native": "each mask's own size (eval_size=native)"}.get(results.get("eval_size"), "image size (eval_size=image)")),
           *([("protocol", results["protocol"])] if results.get("protocol") else []),
           *([("segmentation threshold", results["seg_threshold_source"])] if results.get("seg_threshold_source") else []),
           ("test images", f"{results['n_images']} ({results['n_anomalous']} anomalous)"),
           ("evaluated on", results.get("device", "")), ("evaluated at", results.get("date", "")),
           ("seconds per image", f"{results['seconds_per_image']:.4f} (networks and anomaly maps)")]
    category = results["category"]
    sections = ["metrics", "curves", "scores", "gallery", "loss", "run", "settings"]
    body = [
        f"<h1>{html.escape(category)}: {html.escape(results['method'].upper())} evaluation report</h1>",
        f'<p class="note">Written by test.py at {datetime.now():%Y-%m-%d %H:%M:%S} beside results.json '
        "(the numbers below are its values), scores.csv and curves.json. "
        + " | ".join(f'<a href="#{name}">{name}</a>' for name in sections) + "</p>",
        threshold_html(threshold, labels, scores),
        '<h2 id="metrics">Metrics</h2>', table(["metric", "value", "definition"], metric_rows),
        '<h2 id="curves">Curves</h2>', f'<img src="{curves_png}" alt="ROC, precision-recall and PRO curves">',
        '<h2 id="scores">Image scores per test folder</h2>', f'<img src="{scores_png}" alt="image scores per test folder">',
        table(["test folder", "images", "image AUROC against good", "recall at the threshold"],
              per_type_rows(types, scores, threshold.value)),
        f'<h2 id="gallery">Gallery: all {len(paths)} test images</h2>',
        f'<p class="note">Input | {"" if masks is None else "ground truth outlined in red | "}anomaly heatmap (one colour '
        f"scale for the whole test set: {heat_range[0]:.4f} blue to {heat_range[1]:.4f} red). Mistakes at the threshold "
        "first (missed defects in a red frame, false alarms in orange), then by score. Click a picture for its full size.</p>",
        '<div class="gallery">' + "\n".join(figures) + "</div>",
        '<h2 id="loss">Training loss</h2>', f'<img src="{loss_png}" alt="training loss per epoch">' if loss_png
        else f'<p class="note">{html.escape(loss_problem)}</p>',
        '<h2 id="run">Run</h2>', table(["", ""], [[cell(html.escape(k)), cell(html.escape(str(v)))] for k, v in run]),
        '<h2 id="settings">Training settings (from the checkpoint)</h2>', table(["setting", "value"], settings),
    ]
    path = os.path.join(folder, "report.html")
    atomic_write_text(path, page(f"{category} report", "\n".join(body)))
    return path


def write_prediction_report(folder, scored_folder, paths, strip_files, scores, threshold):
    """folder/report.html + folder/report/ for the images at paths in scored_folder (predict.py): the gallery,
    highest score first, each thumbnail made from and opening the full-size strip already written (strip_files,
    relative to folder); threshold: threshold.Choice. Returns the path of report.html."""
    scores = np.asarray(scores, dtype=np.float64).tolist()
    pictures = PictureFolder(folder)
    try:
        figures = []
        for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
            with Image.open(os.path.join(folder, strip_files[i])) as strip:
                thumb, _ = pictures.save_strip(strip.convert("RGB"), os.path.basename(paths[i]), full=False)
            kind, words = verdict(None, scores[i], threshold.value)
            caption = f"<b>{words}</b> {html.escape(paths[i])}<br>score {scores[i]:.4f}"
            figures.append(figure_html(thumb, strip_files[i], paths[i], caption, kind, scores[i]))
        pictures.commit()
    except BaseException:
        pictures.discard()
        raise
    n_anomalous = sum(s >= threshold.value for s in scores)
    body = [
        f"<h1>Scored images: {html.escape(scored_folder)}</h1>",
        f'<p class="note">Written by predict.py at {datetime.now():%Y-%m-%d %H:%M:%S} beside scores.csv.</p>',
        threshold_html(threshold),
        f"<p><b>{n_anomalous} of {len(paths)}</b> images anomalous.</p>",
        f"<h2>Gallery: all {len(paths)} images</h2>",
        '<p class="note">Input | anomaly heatmap, highest score first. Click a picture for its full size.</p>',
        '<div class="gallery">' + "\n".join(figures) + "</div>",
    ]
    path = os.path.join(folder, "report.html")
    atomic_write_text(path, page(f"{scored_folder}: scored images", "\n".join(body)))
    return path


def write_sweep_report(out_dir, blocks):
    """out_dir/report.html from a sweep's document: blocks ('h1'|'h2'|'p', text), ('ul', [items]) or ('table',
    header, rows, categories): categories[i] is the category of column i (None for others); each cell of a
    category column, and its header, links to <category>/report.html where that report exists."""
    parts = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in block[1]) + "</ul>")
        else:
            _, header, rows, categories = block
            links = [f"{c}/report.html" if c and os.path.isfile(os.path.join(out_dir, c, "report.html")) else None
                     for c in categories]

            def linked(text, link):
                return f'<a href="{html.escape(link)}">{html.escape(text)}</a>' if link and text else html.escape(text)

            rows_html = [[cell(linked(text, link), "value" if i else None) for i, (text, link) in enumerate(zip(row, links))]
                         for row in rows]
            parts.append(table([linked(h, link) for h, link in zip(header, links)], rows_html))
    title = next((b[1] for b in blocks if b[0] == "h1"), "sweep")
    path = os.path.join(out_dir, "report.html")
    atomic_write_text(path, page(title, "\n".join(parts)))
    return path
