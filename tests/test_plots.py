"""
The report's plots, drawn by a `python evaluation/plots.py` process (evaluation.plots.Plotter): what it writes, and how each failure
reaches test.py: a file it cannot write as the OSError test.py would have raised itself, a missing matplotlib as a
one-line user error, a process that died as an error that names it.

Run: python -m pytest -q tests/test_plots.py
"""

import errno

import pytest
from PIL import Image

from evaluation.plots import Plotter
from utils.config import ConfigError

CURVES = {"image_roc": {"fpr": [0, 0.5, 1], "tpr": [0, 1, 1]}, "image_pr": {"recall": [0, 1], "precision": [1, 0.5]},
          "pixel_roc": None, "pixel_pr": None, "pixel_pro": None}


@pytest.fixture
def plotter():
    plotter = Plotter()
    yield plotter
    plotter.close()


def test_draws_each_plot_as_a_png(plotter, tmp_path):
    plotter.draw("curves", str(tmp_path / "curves.png"), curves=CURVES, metrics={"image_auroc": 0.75, "image_ap": None})
    plotter.draw("scores", str(tmp_path / "scores.png"), groups=[["good", [0.1, 0.2]], ["crack", [0.3]]], threshold=0.25)
    plotter.draw("loss", str(tmp_path / "loss.png"), epochs=[1, 2, 3], losses=[0.5, 0.3, float("nan")])
    plotter.wait()
    sizes = {}
    for name in ("curves", "scores", "loss"):
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.format == "PNG"
            sizes[name] = picture.size
    assert sizes["curves"] == (13 * 80, 3.8 * 80) and sizes["loss"] == (6 * 80, 2.8 * 80)  # inches x PLOT_DPI
    plotter.close()  # and close ends the process
    assert plotter.process.returncode is not None


def test_a_file_it_cannot_write_is_an_os_error_naming_it(plotter, tmp_path):
    path = str(tmp_path / "gone" / "loss.png")
    plotter.draw("loss", path, epochs=[1], losses=[0.5])
    with pytest.raises(OSError) as raised:
        plotter.wait()
    assert raised.value.errno == errno.ENOENT and raised.value.filename == path
    plotter.draw("loss", str(tmp_path / "loss.png"), epochs=[1], losses=[0.5])  # and it goes on drawing
    plotter.wait()
    assert (tmp_path / "loss.png").is_file()


def test_without_matplotlib_it_is_a_user_error(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # found before the installed one
    plotter = Plotter()
    plotter.draw("loss", str(tmp_path / "loss.png"), epochs=[1], losses=[0.5])
    with pytest.raises(ConfigError, match=r"^report=1: matplotlib is not installed .*--report=0"):
        plotter.wait()
    plotter.close()
    assert not (tmp_path / "loss.png").exists()


def test_a_process_that_died_is_named(plotter, tmp_path):
    plotter.process.kill()
    plotter.process.wait()
    with pytest.raises(RuntimeError, match=r"plots\.py, the process drawing the report's plots, ended \(exit status -9\)"):
        plotter.draw("loss", str(tmp_path / "loss.png"), epochs=[1], losses=[0.5])
        plotter.wait()
