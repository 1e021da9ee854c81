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

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from utils.demo_data import make_category  # noqa: E402

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connected regions

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


def run_main(script, *args, check=False):
    """Run `python <script> <args>` in this process, as a user would run it but without a new Python and a new import
    of torch (5-9 s each here); a CompletedProcess with what the user would see: exit status, stdout, and stderr with
    the warnings shown and, for an exception that escapes main, its traceback. check: fail unless it exits 0. What a
    script may change for the whole process (signal handlers, torch's deterministic mode) is put back afterwards."""
    out, err = io.StringIO(), io.StringIO()
    argv, handlers = sys.argv, {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
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
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])  # train.py --deterministic=1 sets them
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic[2:]
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    result = subprocess.CompletedProcess([script, *args], code, out.getvalue(), shown + err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {code}\n{result.stdout}\n{result.stderr}")
    return result


def assert_user_error(result, *names):
    """Non-zero exit and exactly one line on stderr, 'error: ...', naming each of `names` (paths, settings)."""
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def snapshot(folder):
    """{relative path: bytes} of every file under folder: equal before and after means nothing was written,
    half-written, removed or left behind (a stray temporary file)."""
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(parent, name), "rb") as f:
                files[os.path.relpath(os.path.join(parent, name), folder)] = f.read()
    return files


def assert_same(a, b, where="checkpoint"):
    """Bit-identical nested checkpoints: tensors by torch.equal, everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def sweep_command(*args):
    return ["bash", os.path.join(ROOT, "scripts", "run_all_mvtec.sh"), *args]


def run_sweep(*args, timeout=300):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(sweep_command(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def table_row(results_md, table, label):
    """The cells of the row starting with `label` in the markdown table under '## <table>'."""
    section = results_md.split(f"## {table}\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in the {table} table:\n{section}")


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
    """A checkpoint written by train.py on the generated data: (out_dir, checkpoint path). Shared by the whole session:
    a test that needs a trained RD model reads this one and writes elsewhere."""
    out_dir = str(tmp_path_factory.mktemp("runs"))
    run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}", "--epochs=2", "--batch_size=4",
             *SMALL, check=True)
    return out_dir, os.path.join(out_dir, "stripes", "checkpoint.pth")


@pytest.fixture(scope="session")
def evaluated(trained, tmp_path_factory):
    """The trained checkpoint evaluated by test.py with 2 picture strips per defect type, in a run folder of its own
    that holds the checkpoint (a hard link) and train.py's loss.csv: (run folder, test.py's CompletedProcess). The
    category's files are in <run folder>/stripes/; predict.py and calibrate.py of <run folder>/checkpoint.pth find
    this evaluation."""
    out_dir, checkpoint = trained
    run = tmp_path_factory.mktemp("evaluated")
    os.link(checkpoint, run / "checkpoint.pth")
    shutil.copy(os.path.join(os.path.dirname(checkpoint), "loss.csv"), run / "loss.csv")
    result = run_main("test.py", f"--checkpoint={run / 'checkpoint.pth'}", f"--out_dir={run}", "--save_images=2", "--device=cpu",
                      check=True)
    return run, result


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


def make_mvtec_ad_2_source(root, sizes, n_private=3, n_validation=2, n_train=4):
    """MVTec AD 2 as MVTec distributes it, for the objects of `sizes` ({object: (height, width)}): <object>/train/good,
    validation/good, test_public/{good,bad,ground_truth/bad}, and the unlabelled test_private/NNN_regular.png and
    test_private_mixed/NNN_mixed.png, n_private of each. Random RGB images of the object's size; a bright square in the
    public defects (masked in ground_truth) and in the odd-numbered mixed images."""
    rng = np.random.default_rng(0)

    def write(path, size, square=False):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pixels = rng.integers(60, 120, size=(*size, 3), dtype=np.uint8)
        if square:
            pixels[size[0] // 4:size[0] // 2, size[1] // 4:size[1] // 2] = 250
        Image.fromarray(pixels).save(path)

    for name, size in sizes.items():
        folder = os.path.join(root, name)
        for i in range(n_train):
            write(os.path.join(folder, "train", "good", f"{i:03d}_regular.png"), size)
        for i in range(n_validation):
            write(os.path.join(folder, "validation", "good", f"{i:03d}_regular.png"), size)
        write(os.path.join(folder, "test_public", "good", "000_regular.png"), size)
        write(os.path.join(folder, "test_public", "bad", "000_regular.png"), size, square=True)
        mask = np.zeros(size, np.uint8)
        mask[size[0] // 4:size[0] // 2, size[1] // 4:size[1] // 2] = 255
        os.makedirs(os.path.join(folder, "test_public", "ground_truth", "bad"), exist_ok=True)
        Image.fromarray(mask).save(os.path.join(folder, "test_public", "ground_truth", "bad", "000_regular_mask.png"))
        for i in range(n_private):
            write(os.path.join(folder, "test_private", f"{i:03d}_regular.png"), size)
            write(os.path.join(folder, "test_private_mixed", f"{i:03d}_mixed.png"), size, square=i % 2 == 1)


# ----------------------------------------------------------------------------- independent transcriptions of definitions,
# deliberately slow, shared by test_metrics.py, test_high_resolution.py and test_ad2_protocol.py

def ref_regions(masks, structure):
    """Boolean mask of every region of every image, labelled image by image."""
    out = []
    for i, mask in enumerate(masks):
        lab, n = ndimage.label(mask, structure=structure)
        for r in range(1, n + 1):
            region = np.zeros(masks.shape, dtype=bool)
            region[i] = lab == r
            out.append(region)
    return out


def ref_aupro(maps, masks, structure=EIGHT, max_fpr=0.3):
    regions = [maps[r] for r in ref_regions(masks, structure)]
    normal = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
        fprs.append(np.sum(normal >= t) / normal.size)
        if fprs[-1] > max_fpr:
            break
    area = 0.0
    for f0, f1, p0, p1 in zip(fprs[:-1], fprs[1:], pros[:-1], pros[1:]):
        if f1 <= max_fpr:
            area += (f1 - f0) * (p0 + p1) / 2
        else:
            p_cut = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0)
            area += (max_fpr - f0) * (p0 + p_cut) / 2
            break
    return area / max_fpr


def bilinear(amap, size):
    """The definition of bilinear resizing with pixel centres aligned, written out: output pixel i of n_out reads the
    input at (i + 0.5) * n_in / n_out - 0.5, clamped at 0, between its two neighbours (the last one repeated)."""
    for axis, n_out in enumerate(size):
        n_in = amap.shape[axis]
        source = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        low = np.floor(source).astype(int)
        high, weight = np.minimum(low + 1, n_in - 1), source - low
        shape = [1, 1]
        shape[axis] = n_out
        amap = np.take(amap, low, axis) * (1 - weight.reshape(shape)) + np.take(amap, high, axis) * weight.reshape(shape)
    return amap
