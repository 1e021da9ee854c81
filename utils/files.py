"""
Atomic file writes (text, JSON, CSV) and one-line error text, with the standard library only (no torch), so that
scripts/predict_onnx.py can share them with train.py and test.py.

    atomic_write_json("runs/bottle/results.json", results)   # a crash leaves the old file or the new one

Every output is written to a temporary file in the same folder and renamed over the target, so a crash,
Ctrl-C or a full disk leaves either the old file or the new one, never half of one.
"""

import csv
import io
import json
import os
import tempfile

UMASK = os.umask(0)
os.umask(UMASK)


def atomic_write(path, write):
    """Call write(file_object) on a temporary binary file beside `path`, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def write_csv(path, header, rows):
    """A CSV file with a header row, written atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def first_line(error):
    """The first line of an exception's message, or its type's name if the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
