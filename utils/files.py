"""
Output files: checked before the work, written atomically (text, JSON, CSV), and one-line error text, with the
standard library only (no torch), so that scripts/predict_onnx.py can share them with train.py and test.py.

    check_outputs("out_dir=runs", "runs/bottle", files=["results.json"])   # a ConfigError now, not after the work
    atomic_write_json("runs/bottle/results.json", results)   # a crash leaves the old file or the new one

Every entry point calls check_outputs on what it will write before it loads data, builds networks or trains.
Every output is written to a temporary file in the same folder and renamed over the target, so a crash,
Ctrl-C or a full disk leaves either the old file or the new one, never half of one.
"""

import contextlib
import csv
import io
import json
import os
import tempfile

from utils.config import ConfigError

UMASK = os.umask(0)
os.umask(UMASK)


def check_outputs(setting, folder, files=(), folders=()):
    """Fail before the work, not after it: raise ConfigError("<setting>: <reason>") unless `folder` and each of
    `folders` (paths relative to it) is a folder or can be made one, a temporary file can be written in each,
    and none of `files` (paths relative to folder, the files the script will write) is a folder.
    setting names what the user set, as they set it: 'out_dir=runs'.

    Writing is tried, not judged from permission bits, which root passes whatever they say and a read-only
    mount fails whatever they say. The try leaves nothing behind: its file is removed, and so are the folders
    made for it, so that a run that fails later on its inputs does not leave an empty run folder."""
    folder = folder or "."  # os.path.dirname("model.onnx")
    made = []  # created here, removed again at the end
    try:
        targets = [os.path.join(folder, name) for name in files]
        for path in dict.fromkeys([folder, *(os.path.join(folder, f) for f in folders), *map(os.path.dirname, targets)]):
            try_writing(path, setting, made)
        for path in targets:
            if os.path.isdir(path):
                raise ConfigError(f"{setting}: {path} is a folder, where a file is to be written")
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):  # not empty: another process has started writing there
                os.rmdir(path)


def try_writing(folder, setting, made, attempts=3):
    """Make folder and the missing folders above it (appending each to `made`), then create and remove a file in it."""
    for attempt in range(attempts):
        creating = None
        try:
            for creating in missing_folders(folder, setting):
                with contextlib.suppress(FileExistsError):  # made meanwhile by another process
                    os.mkdir(creating)
                    made.append(creating)
            creating = None
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
            os.close(fd)
            os.unlink(probe)
            return
        except OSError as e:
            # Processes started together into one out_dir (a Slurm array): a folder made by another one's check
            # can be removed by it just as this one uses it, so a vanished folder is tried again; /proc's
            # answer to every new name is also ENOENT, and stays so.
            if isinstance(e, FileNotFoundError) and attempt < attempts - 1:
                continue
            failed = f"cannot create the folder {creating}" if creating else f"cannot write in {folder}"
            raise ConfigError(f"{setting}: {failed}: {e.strerror}") from None


def missing_folders(path, setting):
    """The folders to create for path to be one, outermost first; a ConfigError if a file is in the way."""
    missing, existing = [], path.rstrip(os.sep) or os.sep
    while not os.path.isdir(existing):
        if os.path.lexists(existing):  # a file, or a link to nothing, where a folder must be
            raise ConfigError(f"{setting}: {existing} is not a folder" if existing == path.rstrip(os.sep)
                              else f"{setting}: cannot create a folder under {existing}: not a folder")
        missing.append(existing)
        existing = os.path.dirname(existing) or "."
    return missing[::-1]


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
