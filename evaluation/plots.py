"""
The plots of an evaluation's report (evaluation/report.py), drawn with matplotlib in a process of their own: the ROC,
precision-recall and PRO curves, the image scores per test folder, the training loss.

test.py starts that process (Plotter) before it imports torch, so that matplotlib's import and its first drawing
(about 1.3 s on 2 cores, most of what a report would cost) run on the core that the import of torch leaves idle. A
thread would not hide them: an import holds Python's global lock. The plots are then drawn while test.py draws the
gallery.

    plotter = Plotter()                                    # starts `python evaluation/plots.py`
    plotter.draw("loss", "report/loss.png", epochs=[1, 2], losses=[0.31, 0.22])
    plotter.wait()                                         # every plot asked for is on disk (or an error is raised)
    plotter.close()

Between the two: one JSON line per plot on the process's stdin ({"figure", "path", "args"}), one JSON line per
plot back on its stdout ({} when written, else what went wrong). The process ends when its stdin closes.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np

from utils.config import ConfigError

PLOT_DPI = 80


def fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def new_figure(width, height, margins):
    """A matplotlib Figure of width x height inches; margins (left, bottom, right, top) in inches, fixed rather
    than computed by a layout engine, which would double the time of drawing."""
    from matplotlib.figure import Figure  # here, so that a missing matplotlib is one request's error, not a crash

    left, bottom, right, top = margins
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=left / width, bottom=bottom / height, right=1 - right / width, top=1 - top / height)
    return figure


def curves_figure(curves, metrics):
    """ROC, precision-recall and PRO (up to FPR 0.3) curves, image and pixel level side by side. curves:
    evaluation.metrics.metrics_and_curves's (curves.json); metrics: its AUROCs, APs and AUPRO, for the legends."""
    figure = new_figure(13, 3.8, (0.6, 0.55, 0.15, 0.35))
    roc, pr, pro = figure.subplots(1, 3, gridspec_kw={"wspace": 0.25})
    for level, color in (("image", "C0"), ("pixel", "C1")):
        if curves.get(f"{level}_roc"):
            roc.plot(curves[f"{level}_roc"]["fpr"], curves[f"{level}_roc"]["tpr"], color=color,
                     label=f"{level} AUROC {fmt(metrics.get(f'{level}_auroc'))}")
        if curves.get(f"{level}_pr"):
            pr.plot(curves[f"{level}_pr"]["recall"], curves[f"{level}_pr"]["precision"], color=color,
                    label=f"{level} AP {fmt(metrics.get(f'{level}_ap'))}")
    roc.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    roc.set(title="ROC", xlabel="false-positive rate", ylabel="true-positive rate")
    pr.set(title="precision-recall", xlabel="recall", ylabel="precision")
    if curves.get("pixel_pro"):
        fpr, overlap = curves["pixel_pro"]["fpr"], curves["pixel_pro"]["pro"]
        pro.plot(fpr, overlap, color="C1", label=f"pixel AUPRO {fmt(metrics.get('pixel_aupro'))}")
        pro.fill_between(fpr, overlap, color="C1", alpha=0.15)
    else:
        pro.text(0.15, 0.5, "no pixel ground truth", ha="center")
    pro.set(title="PRO up to FPR 0.3 (integrated part)", xlabel="false-positive rate (pixels)", ylabel="per-region overlap")
    for axes, right in ((roc, 1), (pr, 1), (pro, 0.3)):
        # few tick labels: drawing text is most of a plot's time, and these plots are drawn for every evaluation
        axes.set(xlim=(0, right), ylim=(0, 1.02), xticks=np.linspace(0, right, 4 if right < 1 else 5), yticks=[0, 0.25, 0.5, 0.75, 1])
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="lower right" if axes is not pr else "lower left", fontsize=9)
    return figure


def scores_figure(groups, threshold):
    """The image scores of each test folder as a strip of dots, one row per folder, and the threshold.
    groups: [(folder name, [score, ...]), ...], good first."""
    figure = new_figure(9, 0.9 + 0.45 * len(groups), (1.0, 0.55, 0.15, 0.1))
    axes = figure.subplots()
    for row, (name, scores) in enumerate(groups):
        color = "C2" if name == "good" else "C3"
        # a deterministic spread inside the row, so that equal scores do not hide each other
        spread = (np.arange(len(scores)) % 5 - 2) * 0.06
        axes.scatter(scores, row + spread, s=30, color=color, alpha=0.75, edgecolors="none")
    if threshold is not None:
        axes.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:.4f}")
        axes.legend(loc="upper right", fontsize=9)
    axes.set_yticks(range(len(groups)), [name for name, _ in groups])
    axes.set_ylim(len(groups) - 0.5, -0.5)
    axes.set_xlabel("image score (anomaly map maximum)")
    axes.grid(axis="x", alpha=0.3)
    return figure


def loss_figure(epochs, losses):
    figure = new_figure(6, 2.8, (0.8, 0.55, 0.15, 0.35))
    axes = figure.subplots()
    axes.plot(epochs, losses, marker="o", markersize=3)
    axes.set(xlabel="epoch", ylabel="loss", title="training loss (mean over each epoch)")
    axes.grid(alpha=0.3)
    return figure


FIGURES = {"curves": curves_figure, "scores": scores_figure, "loss": loss_figure}


# -----------------------------------------------------------------------------
# the process that draws them, and test.py's end of it

def serve(requests, answers):
    """Draw each kind of plot once, to load matplotlib, its fonts and its caches, then draw every plot asked for on
    `requests`."""
    curve = {"fpr": [0, 1], "tpr": [0, 1], "recall": [0, 1], "precision": [1, 0], "pro": [0, 1]}
    try:
        for figure in (curves_figure({f"{level}_{kind}": curve for level in ("image", "pixel") for kind in ("roc", "pr", "pro")}, {}),
                       scores_figure([("good", [0.1]), ("defect", [0.9])], 0.5), loss_figure([1, 2], [1.0, 0.5])):
            figure.savefig(io.BytesIO(), format="png", dpi=PLOT_DPI)
    except ImportError:
        pass  # the first request says so
    for line in requests:
        request = json.loads(line)
        try:
            FIGURES[request["figure"]](**request["args"]).savefig(request["path"], dpi=PLOT_DPI)
            answer = {}
        except ImportError as e:
            answer = {"missing": e.name}
        except OSError as e:  # sent back whole: test.py raises it as if it had written the file itself
            answer = {"errno": e.errno, "strerror": e.strerror, "filename": e.filename}
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


class Plotter:
    """A `python evaluation/plots.py` process: draw() asks it for a plot, wait() returns when every plot asked for is
    written, or raises the first error: OSError for a file it could not write, ConfigError when matplotlib is
    not installed, else RuntimeError."""

    def __init__(self):
        # -m with the project's root on the path: the process imports utils/ as the commands do
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self.process = subprocess.Popen([sys.executable, "-m", "evaluation.plots"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
        self.pending = 0

    def draw(self, figure, path, **args):
        try:
            self.process.stdin.write(json.dumps({"figure": figure, "path": path, "args": args}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            self.stopped()
        self.pending += 1

    def answers(self):
        """The answers to the plots asked for since the last call, waiting for each; None for those the process
        ended before drawing."""
        answers = [json.loads(self.process.stdout.readline() or "null") for _ in range(self.pending)]
        self.pending = 0
        return answers

    def wait(self):
        for answer in self.answers():
            if answer is None:
                self.stopped()
            if "missing" in answer:
                raise ConfigError(f"report=1: {answer['missing']} is not installed (pip install -r requirements.txt), "
                                  "or pass --report=0 for no report")
            if "errno" in answer:
                raise OSError(answer["errno"], answer["strerror"], answer["filename"])
            if "error" in answer:
                raise RuntimeError(f"{__file__}: {answer['error']}")

    def close(self):
        """End the process at once: the plots asked for have been waited for, or are not wanted any more."""
        self.process.kill()
        self.process.wait()
        with contextlib.suppress(BrokenPipeError):  # a request still in the buffer, which no one will read
            self.process.stdin.close()
        self.process.stdout.close()

    def stopped(self):
        raise RuntimeError(f"{__file__}, the process drawing the report's plots, ended (exit status {self.process.wait()})")


if __name__ == "__main__":
    try:
        serve(sys.stdin, sys.stdout)
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C reaches this process too; test.py reports it
        sys.exit(1)
