"""
Bad inputs, and output locations that cannot be written, fail early with one line, `error: <path or setting>:
<what is expected>`, a non-zero exit, no Python traceback (unless --debug=1), and without touching the outputs of
an earlier run; an OS error that can only show up later (a full disk) is one line too.

Most cases run the scripts inside this process (conftest.run_main): importing torch and building the teacher is
most of what a subprocess costs here. A few cases use a real `python train.py` to show the same thing end to end.

Run: python -m pytest -q tests/test_errors.py   (about a minute on 2 CPU cores)
"""

import errno
import json
import os
import shutil
import tempfile

import pytest
import torch
from PIL import Image

from conftest import SMALL, WITHOUT_TORCH, assert_user_error, run_main, run_script, snapshot
from model import OCBE, Decoder
from utils.config import run_cli
from utils.files import check_outputs


@pytest.fixture
def data(data_root, tmp_path):
    """A private copy of the generated category, to break: returns the category folder."""
    shutil.copytree(data_root, tmp_path / "data")
    return tmp_path / "data" / "stripes"


@pytest.fixture
def previous_run(tmp_path):
    """out_dir holding an earlier run's files (small stand-ins): the tests check they come out byte-identical."""
    folder = tmp_path / "runs" / "stripes"
    folder.mkdir(parents=True)
    for name in ("checkpoint.pth", "config.json", "results.json", "scores.csv"):
        (folder / name).write_bytes(f"earlier run's {name}\n".encode())
    return str(tmp_path / "runs")


def train(data, out_dir, *args):
    """train.py on a category folder, replacing out_dir's run (--overwrite=1) once the inputs check out."""
    return run_main("train.py", f"--data_root={data.parent}", f"--category={data.name}", f"--out_dir={out_dir}",
                    "--epochs=1", "--overwrite=1", *SMALL, *args)


def evaluate(checkpoint, out_dir, *args):
    return run_main("test.py", f"--checkpoint={checkpoint}", f"--out_dir={out_dir}", "--device=cpu", *args)


def break_image(path, how):
    """Damage one image file the ways files get damaged: empty, cut short, not an image at all."""
    content = path.read_bytes()
    if how == "zero_bytes":
        path.write_bytes(b"")
    elif how == "first_100_bytes":
        path.write_bytes(content[:100])
    elif how == "first_half":
        path.write_bytes(content[:len(content) // 2])
    elif how == "random_bytes":
        path.write_bytes(os.urandom(300))
    elif how == "a_folder":
        path.unlink()
        path.mkdir()
    elif how == "no_read_permission":
        path.chmod(0)


BROKEN = ["zero_bytes", "first_100_bytes", "first_half", "random_bytes", "a_folder",
          pytest.param("no_read_permission", marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file"))]

# -----------------------------------------------------------------------------
# settings


@pytest.mark.parametrize("script, args, named", [
    ("train.py", ["--learning_rate=0.1"], "--learning_rate"),  # unknown name: the message lists the valid ones
    ("train.py", ["epochs=3"], "epochs=3"),  # not --name=value
    ("train.py", ["--lr=fast"], "--lr=fast"),  # wrong type
    ("train.py", ["--batch_size=2.5"], "--batch_size=2.5"),
    ("train.py", ["--betas=(0.5,)"], "--betas"),  # a tuple of the wrong length
    ("train.py", ["--resume=yes"], "--resume=yes"),
    ("train.py", ["--lr=-0.1"], "--lr"),  # impossible values
    ("train.py", ["--lr=0"], "--lr"),
    ("train.py", ["--image_size=100"], "--image_size"),
    ("train.py", ["--image_size=0"], "--image_size"),
    ("train.py", ["--batch_size=0"], "--batch_size"),
    ("train.py", ["--epochs=0"], "--epochs"),
    ("train.py", ["--save_minutes=-1"], "--save_minutes"),
    ("train.py", ["--resume=1", "--overwrite=1"], "--resume"),
    ("train.py", ["--backbone=resnet19"], "backbone=resnet19"),
    ("train.py", ["--weights=/no/such/teacher.pth"], "weights=/no/such/teacher.pth"),
    ("test.py", [], "--checkpoint"),
    ("test.py", ["--checkpoint=x.pth", "--map_mode=max"], "--map_mode=max"),
    ("test.py", ["--checkpoint=x.pth", "--batch_size=0"], "--batch_size=0"),
    ("test.py", ["--checkpoint=x.pth", "--threshold=0.5"], "python predict.py"),  # a setting of another command: named
    ("test.py", ["--checkpoint=x.pth", "--images=photos"], "python predict.py"),
    ("test.py", ["--checkpoint=x.pth", "--good_images=good"], "python calibrate.py"),
    ("test.py", ["--checkpoint=x.pth", "--false_alarm_rate=0.01"], "python calibrate.py"),
    ("predict.py", [], "--checkpoint"),
    ("predict.py", ["--checkpoint=x.pth"], "--images"),
    ("predict.py", ["--checkpoint=x.pth", "--images=photos", "--threshold=high"], "--threshold=high"),
    ("predict.py", ["--checkpoint=x.pth", "--images=photos", "--map_mode=max"], "--map_mode=max"),
    ("calibrate.py", [], "--checkpoint"),
    ("calibrate.py", ["--checkpoint=x.pth"], "--good_images"),
    ("calibrate.py", ["--checkpoint=x.pth", "--good_images=good", "--batch_size=0"], "--batch_size=0"),
    pytest.param("train.py", ["--lr=1e400"], "--lr", id="lr-inf"),
    pytest.param("train.py", ["--seed=-1"], "--seed", id="seed-negative"),
    pytest.param("train.py", ["--device=tpu"], "--device=tpu", id="device-unknown"),
    pytest.param("train.py", ["--device=cuda"], "--device=cuda", id="device-no-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_bad_setting(data_root, previous_run, script, args, named):
    before = snapshot(previous_run)
    # SMALL first: the setting under test overrides it, as the last --name=value wins
    common = [f"--data_root={data_root}", "--category=stripes", f"--out_dir={previous_run}", "--overwrite=1", *SMALL]
    result = run_main(script, *(common if script == "train.py" else []), *args)
    assert_user_error(result, named)
    assert snapshot(previous_run) == before


def test_unknown_setting_lists_the_valid_ones():
    line = assert_user_error(run_main("train.py", "--learning_rate=0.1"), "--learning_rate")
    assert "lr" in line.split("valid names:")[1].replace(" ", "").split(",")


def test_existing_run_is_not_overwritten(data_root, previous_run):
    before = snapshot(previous_run)
    result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={previous_run}", *SMALL)
    line = assert_user_error(result, os.path.join(previous_run, "stripes", "checkpoint.pth"))
    assert "--resume=1" in line and "--overwrite=1" in line
    assert snapshot(previous_run) == before


# -----------------------------------------------------------------------------
# training data


def test_missing_data_root(tmp_path, previous_run):
    before = snapshot(previous_run)
    assert_user_error(train(tmp_path / "nowhere" / "stripes", previous_run), f"data_root={tmp_path / 'nowhere'}")
    assert snapshot(previous_run) == before


def test_missing_category(data, previous_run):
    before = snapshot(previous_run)
    line = assert_user_error(train(data.parent / "bottle", previous_run), "category=bottle")
    assert "found: stripes" in line  # what is there instead
    assert snapshot(previous_run) == before


def test_missing_train_good(data, previous_run):
    before = snapshot(previous_run)
    shutil.rmtree(data / "train" / "good")
    assert_user_error(train(data, previous_run), data / "train" / "good")
    assert snapshot(previous_run) == before


def test_train_good_without_images(data, previous_run):
    before = snapshot(previous_run)
    shutil.rmtree(data / "train" / "good")
    (data / "train" / "good").mkdir()
    (data / "train" / "good" / "notes.txt").write_text("no images here")
    assert_user_error(train(data, previous_run), data / "train" / "good")
    assert snapshot(previous_run) == before


@pytest.mark.parametrize("how", BROKEN)
def test_broken_train_image_is_named_not_skipped(data, previous_run, how):
    before = snapshot(previous_run)
    broken = data / "train" / "good" / "003.png"
    break_image(broken, how)
    assert_user_error(train(data, previous_run), broken)
    assert snapshot(previous_run) == before


def test_non_image_files_are_ignored_and_counted(data, capsys):
    from dataset import load_train_images
    (data / "train" / "good" / "notes.txt").write_text("not an image")
    (data / "train" / "good" / "Thumbs.db").write_bytes(b"\0" * 10)
    images = load_train_images(str(data.parent), "stripes", 64)
    assert images.shape == (8, 3, 64, 64)
    assert f"{data / 'train' / 'good'}: ignored 2 non-image files" in capsys.readouterr().out


def test_data_is_checked_before_the_teacher_is_built(tmp_path, previous_run):
    result = train(tmp_path / "nowhere" / "stripes", previous_run, "--weights=/no/such/teacher.pth")
    assert_user_error(result, f"data_root={tmp_path / 'nowhere'}")


# -----------------------------------------------------------------------------
# test data (test.py with the session's trained checkpoint)


def evaluate_on(data, trained, previous_run, *args):
    return evaluate(trained[1], previous_run, f"--data_root={data.parent}", *args)


@pytest.mark.parametrize("how", ["zero_bytes", "first_100_bytes"])
def test_broken_test_image(data, trained, previous_run, how):
    before = snapshot(previous_run)
    broken = data / "test" / "scratch" / "001.png"
    break_image(broken, how)
    assert_user_error(evaluate_on(data, trained, previous_run), broken)
    assert snapshot(previous_run) == before


def test_broken_mask(data, trained, previous_run):
    before = snapshot(previous_run)
    broken = data / "ground_truth" / "spot" / "000_mask.png"
    break_image(broken, "first_100_bytes")
    assert_user_error(evaluate_on(data, trained, previous_run), broken)
    assert snapshot(previous_run) == before


def test_defect_image_without_mask(data, trained, previous_run):
    before = snapshot(previous_run)
    (data / "ground_truth" / "hole" / "001_mask.png").unlink()
    line = assert_user_error(evaluate_on(data, trained, previous_run), data / "test" / "hole" / "001.png")
    assert str(data / "ground_truth" / "hole" / "001_mask.png") in line
    assert snapshot(previous_run) == before


def test_mask_without_image(data, trained, previous_run):
    before = snapshot(previous_run)
    orphan = data / "ground_truth" / "hole" / "007_mask.png"
    shutil.copy(data / "ground_truth" / "hole" / "000_mask.png", orphan)
    assert_user_error(evaluate_on(data, trained, previous_run), orphan)
    assert snapshot(previous_run) == before


def test_rgb_mask(data, trained, previous_run):
    before = snapshot(previous_run)
    mask = data / "ground_truth" / "color" / "000_mask.png"
    Image.open(mask).convert("RGB").save(mask)
    line = assert_user_error(evaluate_on(data, trained, previous_run), mask)
    assert "RGB" in line
    assert snapshot(previous_run) == before


def test_missing_test_folder(data, trained, previous_run):
    before = snapshot(previous_run)
    shutil.rmtree(data / "test")
    assert_user_error(evaluate_on(data, trained, previous_run), data / "test")
    assert snapshot(previous_run) == before


def test_mask_of_another_size_is_resized_with_a_warning(data, trained, previous_run):
    mask = data / "ground_truth" / "spot" / "001_mask.png"
    Image.open(mask).resize((128, 128), Image.Resampling.NEAREST).save(mask)
    result = evaluate_on(data, trained, previous_run)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{mask}: mask is 128x128 but its image is 64x64" in result.stderr
    assert os.path.isfile(os.path.join(previous_run, "stripes", "results.json"))


def test_non_image_test_files_are_ignored_and_counted(data, trained, previous_run):
    (data / "test" / "good" / "notes.txt").write_text("not an image")
    result = evaluate_on(data, trained, previous_run)
    assert result.returncode == 0, result.stderr
    assert f"{data / 'test' / 'good'}: ignored 1 non-image files" in result.stdout
    with open(os.path.join(previous_run, "stripes", "scores.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 3 + 8  # header, good, defects: the .txt is not scored


@pytest.mark.parametrize("keep, undefined, defined", [
    ("good", ["image_auroc", "image_f1", "image_ap", "pixel_auroc", "pixel_aupro"], []),
    ("defects", ["image_auroc", "image_f1", "image_ap"], ["pixel_auroc", "pixel_aupro"]),
])
def test_one_sided_test_set_reports_the_defined_metrics(data, trained, previous_run, keep, undefined, defined):
    if keep == "good":
        for folder in ("scratch", "spot", "hole", "color"):
            shutil.rmtree(data / "test" / folder)
        shutil.rmtree(data / "ground_truth")
        # kept, empty: without it the category has image labels only (tests/test_prepare_dataset.py)
        (data / "ground_truth").mkdir()
    else:
        shutil.rmtree(data / "test" / "good")
    result = evaluate_on(data, trained, previous_run)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(previous_run, "stripes", "results.json")) as f:
        results = json.load(f)  # null, not NaN: strict JSON readers accept it
    for name in undefined:
        assert results[name] is None and results["undefined"][name], name
        assert f"{name} undefined: {results['undefined'][name]}" in result.stdout
    for name in defined:
        assert 0 <= results[name] <= 1 and name not in results["undefined"], name


def test_test_data_is_checked_before_the_teacher_is_built(data, trained, previous_run):
    (data / "ground_truth" / "hole" / "001_mask.png").unlink()
    result = evaluate_on(data, trained, previous_run, "--weights=/no/such/teacher.pth")
    assert_user_error(result, data / "test" / "hole" / "001.png")


# -----------------------------------------------------------------------------
# checkpoints


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory):
    """An official-style checkpoint ({'bn', 'decoder'} only, no config) of a resnet18 model, freshly built."""
    path = tmp_path_factory.mktemp("official") / "resnet18_stripes.pth"
    torch.save({"bn": OCBE("resnet18").state_dict(), "decoder": Decoder("resnet18").state_dict()}, path)
    return path


def make_bad_checkpoint(tmp_path, trained, kind):
    path = tmp_path / "bad.pth"
    if kind == "missing":
        return path
    if kind == "a_folder":
        path.mkdir()
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        with open(trained[1], "rb") as f:
            path.write_bytes(f.read(1 << 20))  # the first MiB of a real checkpoint
    elif kind == "text":
        path.write_text("checkpoint = 'runs/bottle/checkpoint.pth'\n")
    elif kind == "png":
        Image.new("RGB", (8, 8)).save(path, format="PNG")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "other_dict":
        torch.save({"model": {"weight": torch.zeros(3)}}, path)
    elif kind == "bn_not_a_state_dict":
        torch.save({"bn": 1, "decoder": 2}, path)
    elif kind == "config_not_a_dict":
        torch.save({"bn": {}, "decoder": {}, "config": "resnet18"}, path)
    elif kind == "whole_module":
        torch.save(torch.nn.Linear(2, 2), path)  # a pickled nn.Module, not a state dict
    return path


@pytest.mark.parametrize("kind, says", [
    ("missing", "no such file"), ("a_folder", "no such file"), ("zero_bytes", "empty"),
    ("truncated", "truncated or corrupted"), ("text", "not a file saved by torch.save"),
    ("png", "not a file saved by torch.save"), ("tensor", "'bn'"), ("other_dict", "'bn'"),
    ("bn_not_a_state_dict", "'bn'"), ("config_not_a_dict", "'config'"),
    ("whole_module", "refused to load, unpickling it would call torch.nn.modules.linear.Linear"),
])
def test_not_a_checkpoint(data_root, tmp_path, trained, previous_run, kind, says):
    before = snapshot(previous_run)
    path = make_bad_checkpoint(tmp_path, trained, kind)
    result = evaluate(path, previous_run, f"--data_root={data_root}", "--category=stripes", *SMALL[:-1])
    line = assert_user_error(result, f"checkpoint={path}")
    assert says in line
    assert snapshot(previous_run) == before


def test_checkpoint_of_another_backbone(data_root, resnet18_state, previous_run):
    before = snapshot(previous_run)
    result = evaluate(resnet18_state, previous_run, f"--data_root={data_root}", "--category=stripes",
                      "--backbone=resnet34", "--weights=none", "--image_size=64")
    line = assert_user_error(result, f"checkpoint={resnet18_state}")
    assert "backbone=resnet34" in line
    assert snapshot(previous_run) == before


@pytest.mark.parametrize("setting", ["--backbone=resnet34", "--image_size=128"])
def test_checkpoint_trained_with_other_settings(trained, previous_run, setting):
    before = snapshot(previous_run)
    name = setting[2:].split("=")[0]
    line = assert_user_error(evaluate(trained[1], previous_run, setting), setting, trained[1])
    assert f"trained with {name}=" in line
    assert snapshot(previous_run) == before


def test_resume_from_a_corrupt_checkpoint(data_root, trained, tmp_path):
    out_dir = tmp_path / "runs"
    path = make_bad_checkpoint(tmp_path, trained, "truncated")
    (out_dir / "stripes").mkdir(parents=True)
    shutil.move(path, out_dir / "stripes" / "checkpoint.pth")
    before = snapshot(out_dir)
    result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}",
                      "--resume=1", "--epochs=3", "--batch_size=4", *SMALL)
    assert_user_error(result, f"checkpoint={out_dir / 'stripes' / 'checkpoint.pth'}", "truncated or corrupted")
    assert snapshot(out_dir) == before  # the damaged file is left for the user to look at, not replaced


def test_resume_with_other_settings(data_root, trained, tmp_path):
    with open(os.path.join(trained[0], "stripes", "config.json")) as f:
        config = json.load(f)  # trained with batch_size=4
    out_dir = tmp_path / "runs"
    (out_dir / "stripes").mkdir(parents=True)
    torch.save({"bn": {}, "decoder": {}, "config": config}, out_dir / "stripes" / "checkpoint.pth")
    before = snapshot(out_dir)
    result = run_main("train.py", f"--data_root={data_root}", "--category=stripes", f"--out_dir={out_dir}",
                      "--resume=1", "--epochs=3", "--batch_size=2", *SMALL)
    assert_user_error(result, "--batch_size=2", "batch_size=4")
    assert snapshot(out_dir) == before


# -----------------------------------------------------------------------------
# the same, end to end in a real process


def test_real_process_prints_one_line(tmp_path):
    result = run_script("train.py", f"--data_root={tmp_path / 'nowhere'}", "--category=stripes",
                        f"--out_dir={tmp_path / 'runs'}", *SMALL, check=False)
    assert result.returncode == 2
    assert_user_error(result, f"data_root={tmp_path / 'nowhere'}")
    assert not os.path.exists(tmp_path / "runs")


def test_debug_shows_the_traceback(tmp_path):
    result = run_script("test.py", f"--checkpoint={tmp_path / 'none.pth'}", "--debug=1", check=False)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and f"ConfigError: checkpoint={tmp_path / 'none.pth'}: no such file" in result.stderr


# -----------------------------------------------------------------------------
# output locations, checked before the work


def listing(folder):
    """Every folder and file under folder: equal before and after means nothing was made or left behind."""
    return sorted(os.path.relpath(os.path.join(parent, name), folder)
                  for parent, folders, files in os.walk(folder) for name in folders + files)


# entry point: (its command line writing to the output location OUT, as a function of OUT and the inputs; the
# output under OUT that a folder (or, for prepare_dataset.py, a file) is put in the way of). The inputs are
# missing or not loadable wherever the output check comes first: an error about them means the check came late.
OUTPUTS = {
    "train": (lambda out, i: ["train.py", f"--data_root={i['data_root']}", "--category=stripes", f"--out_dir={out}",
                              "--epochs=1", "--overwrite=1", *SMALL], os.path.join("stripes", "checkpoint.pth")),
    "test": (lambda out, i: ["test.py", f"--checkpoint={i['checkpoint']}", f"--out_dir={out}", "--save_images=1"],
             os.path.join("stripes", "results.json")),
    "predict": (lambda out, i: ["predict.py", f"--checkpoint={i['checkpoint']}", f"--out_dir={out}", f"--images={i['images']}",
                                "--threshold=0.5"], os.path.join("stripes", "predict", "scores.csv")),
    "export": (lambda out, i: ["export.py", f"--checkpoint={i['nowhere']}.pth", f"--out={os.path.join(out, 'model.onnx')}", "--int8=1"],
               "model.onnx"),
    "predict_onnx": (lambda out, i: ["scripts/predict_onnx.py", f"--model={i['nowhere']}.onnx", f"--images={i['images']}",
                                     f"--out_dir={out}"], "scores.csv"),
    "prepare_dataset": (lambda out, i: ["scripts/prepare_dataset.py", "--format=visa", f"--src={i['data_root']}",
                                        f"--dst={os.path.join(out, 'visa')}"], "visa"),
    "sweep": (lambda out, i: ["scripts/sweep.py", f"--data_root={i['nowhere']}", f"--out_dir={out}", "--epochs=1", *SMALL],
              "results.md"),
}


@pytest.fixture
def output_inputs(data_root, tmp_path):
    """What the entry points read: the generated data, and a checkpoint whose networks are empty and whose
    data_root does not exist (test.py gets as far as its output check with it, and no further)."""
    checkpoint = tmp_path / "inputs" / "checkpoint.pth"
    checkpoint.parent.mkdir()
    config = {"method": "rd", "data_root": str(tmp_path / "nowhere"), "category": "stripes", "out_dir": "runs",
              "backbone": "resnet18", "weights": "none", "image_size": 64, "seed": 0}
    torch.save({"bn": {}, "decoder": {}, "config": config}, checkpoint)
    return {"data_root": data_root, "checkpoint": checkpoint, "nowhere": tmp_path / "nowhere",
            "images": os.path.join(data_root, "stripes", "test", "good")}


@pytest.mark.parametrize("kind", ["under_a_file", "read_only", "folder_in_the_way"])
@pytest.mark.parametrize("entry_point", OUTPUTS)
def test_unwritable_output_fails_before_the_work(output_inputs, tmp_path, entry_point, kind):
    """An output location under a regular file, on a file system that takes no new files (/proc: as root,
    permission bits stop nothing), or with a folder where a file goes: one line naming it, before the work."""
    command, in_the_way = OUTPUTS[entry_point]
    regular_file = tmp_path / "a_file"
    regular_file.write_text("not a folder")
    out, named = {"under_a_file": (regular_file / "out", regular_file), "read_only": ("/proc/rd_outputs", "/proc/rd_outputs"),
                  "folder_in_the_way": (tmp_path / "out", tmp_path / "out" / in_the_way)}[kind]
    if kind == "folder_in_the_way" and entry_point == "prepare_dataset":  # it writes a folder: a file is in its way
        named.parent.mkdir()
        named.write_text("a file")
    elif kind == "folder_in_the_way":
        named.mkdir(parents=True)
    before = listing(tmp_path)
    args = command(out, output_inputs)
    if entry_point == "predict_onnx":  # in a process where torch cannot be imported
        result = run_script("-c", WITHOUT_TORCH, *args, check=False)
    else:
        result = run_main(*args)
    assert_user_error(result, named)
    assert listing(tmp_path) == before  # nothing made, nothing left: no probe file, no empty run folder
    if entry_point == "train":
        assert "epoch 1/" not in result.stdout + result.stderr
    if entry_point == "sweep":
        assert "start " not in result.stdout  # no category started


def test_output_check_leaves_nothing_behind(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    check_outputs("out_dir=x", str(existing), ["results.json"], ["images"])  # writes a file in each, to try
    check_outputs("out_dir=x", str(tmp_path / "new" / "run"), [os.path.join("predict", "scores.csv")])
    assert listing(tmp_path) == ["existing"]


def test_output_check_survives_a_concurrent_one(tmp_path, monkeypatch):
    """The sweeps of a Slurm array start together, into one out_dir: another one's check may remove the folder
    it made just as this one tries writing there. That folder is made again, not reported unwritable."""
    out_dir = tmp_path / "runs"
    out_dir.mkdir()  # made by the other check
    real_mkstemp, tries = tempfile.mkstemp, []

    def mkstemp(**kwargs):
        tries.append(kwargs["dir"])
        if len(tries) == 1:
            os.rmdir(out_dir)  # removed by the other check as this one is about to write
        return real_mkstemp(**kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    check_outputs(f"out_dir={out_dir}", str(out_dir), ["results.md"])
    assert tries == [str(out_dir)] * 2
    assert listing(tmp_path) == []


@pytest.mark.parametrize("error, line", [
    (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/runs/bottle/config.json"), "/data/runs/bottle/config.json: Permission denied"),
    (OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/runs/bottle"), "/mnt/runs/bottle: Read-only file system"),
    (IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), "runs/.a.png.x1.tmp", None, "runs/a.png"), "runs/.a.png.x1.tmp -> runs/a.png: Is a directory"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/b/checkpoint.pth"), "runs/b/checkpoint.pth: no space left on the disk; the files written before are intact"),
    (OSError("cannot write mode P as JPEG"), "cannot write mode P as JPEG"),  # PIL's, naming no file
], ids=["EACCES", "EROFS", "rename", "ENOSPC", "no-path"])
def test_os_error_is_one_line(capsys, error, line):
    """An OS error that still happens after the checks (a disk that fills up, a mount that turns read-only):
    run_cli prints `error: <path>: <reason>` and exits 1; --debug=1 keeps the traceback."""
    def main():
        raise error

    with pytest.raises(SystemExit) as exited:
        run_cli(main, lambda: False)
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"error: {line}\n"
    with pytest.raises(type(error)):
        run_cli(main, lambda: True)


def test_late_os_error_keeps_the_outputs_written_before(trained, tmp_path):
    """A folder where test.py's first picture strip goes, found only when it writes it (after the metrics):
    one line naming it, exit 1, and results.json and scores.csv of this evaluation are there."""
    out_dir = tmp_path / "runs"
    strip = out_dir / "stripes" / "images" / "good_000.png"
    strip.mkdir(parents=True)
    result = evaluate(trained[1], out_dir, "--save_images=1")
    assert assert_user_error(result, strip).endswith("Is a directory")
    assert result.returncode == 1
    with open(out_dir / "stripes" / "results.json") as f:
        assert json.load(f)["checkpoint"] == str(trained[1])
    assert (out_dir / "stripes" / "scores.csv").is_file()

