"""Shared fixtures: small generated MVTec-layout data and the helpers to run the scripts as a user would."""

import contextlib
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
import traceback
import warnings

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from utils.demo_data import make_category  # noqa: E402

# small and fast: resnet18 teacher, 64x64 images, random teacher weights (no download here)
SMALL = ["--backbone=resnet18", "--image_size=64", "--weights=none", "--device=cpu"]
# `python -c WITHOUT_TORCH script.py args` runs the script where torch (and scipy) cannot be imported, as on a
# machine without them, and fails if it imported them: scripts/predict_onnx.py must run there
WITHOUT_TORCH = """
import runpy, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "scipy"):
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, Refuse())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
assert not any(m.split(".")[0] in ("torch", "scipy") for m in sys.modules), "torch or scipy imported"
"""


def run_script(*args, check=True, timeout=600):
    """Run `python <args>` from the repo root like a user; returns the CompletedProcess."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def run_main(script, *args):
    """Run `python <script> <args>` in this process; a CompletedProcess with what the user would see: exit status,
    stdout, and stderr with the warnings shown and, for an exception that escapes main, its traceback."""
    out, err = io.StringIO(), io.StringIO()
    argv, handlers = sys.argv, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    sys.argv = [script, *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)  # hidden by default in a script too
            try:
                runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = argv
        for s, handler in handlers.items():  # train.py installs its own: give Ctrl-C back to pytest
            signal.signal(s, handler)
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), shown + err.getvalue())


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_category(str(root), "stripes", size=64, n_train=8, n_test_good=3, n_test_defect=2, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def rdpp_root(tmp_path_factory):
    """Generated data at 96x96, the smallest size with room for RD++'s noise patches."""
    root = tmp_path_factory.mktemp("rdpp_data")
    make_category(str(root), "stripes", size=96, n_train=8, n_test_good=2, n_test_defect=1, seed=3)
    return str(root)


@pytest.fixture(scope="session")
def trained(data_root, tmp_path_factory):
    """A checkpoint written by train.py on the generated data: (out_dir, checkpoint path)."""
    out_dir = str(tmp_path_factory.mktemp("runs"))
    run_script("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}",
               "--epochs=2", "--batch_size=4", *SMALL)
    return out_dir, os.path.join(out_dir, "stripes", "checkpoint.pth")


@pytest.fixture(scope="session")
def new_images(data_root, tmp_path_factory):
    """A folder of unlabelled images in mixed formats and modes, plus a file that is not an image."""
    test_folder = os.path.join(data_root, "stripes", "test")
    defect = next(d for d in sorted(os.listdir(test_folder)) if d != "good")
    good, bad = os.path.join(test_folder, "good"), os.path.join(test_folder, defect)
    folder = tmp_path_factory.mktemp("new_images")
    shutil.copy(os.path.join(good, "000.png"), folder / "a_copy.png")  # bit-identical to a test image
    Image.open(os.path.join(bad, "000.png")).convert("RGB").save(folder / "b.jpg", quality=95)
    Image.open(os.path.join(bad, "001.png")).convert("RGB").save(folder / "c.BMP")
    Image.open(os.path.join(good, "001.png")).convert("L").save(folder / "d_gray.png")
    Image.open(os.path.join(good, "002.png")).convert("RGBA").save(folder / "e_rgba.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory):
    """The decoded-image stores train.py writes (utils.image_store.default_cache_dir) go to a temporary folder, not ~/.cache."""
    folder = tmp_path_factory.mktemp("cache_home")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)  # subprocesses inherit it
    yield str(folder)
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous
