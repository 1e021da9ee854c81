"""
The documentation cannot drift from the code: every command shown in README.md and docs/*.md is checked here.

    $ python -m pytest -q -m "" tests/test_docs.py   (about 30 s on 2 CPU cores, most of it the quick commands, which are slow)

What counts as a command: each line of a fenced ```bash block (a trailing backslash continues it, `#` starts a
comment), and each inline code span that starts with python, bash, torchrun or sbatch (after any VAR=value).
Commands joined by && || ; | are checked one by one.

What is checked, without running anything:
- `python X.py ...`, `python scripts/X.py ...`, `torchrun ... X.py ...`: the script exists, every --name is one of
  its settings and every value parses as that setting's type (utils.config.parse_value). A script's settings are
  read from its source with ast, not by importing it: the module-level constants of its config block (the names
  config_keys collects: lower-case, a literal int/float/bool/str/tuple/None), or its explicit config_keys /
  sweep_keys list; for a script that uses argparse, the names it adds. scripts/sweep.py also takes train.py's and
  test.py's settings, except those it sets itself (SET_BY_SWEEP).
- `bash X.sh ...`, `sbatch X.sh ...`: the script exists, and its arguments are checked against the script it passes
  "$@" on to (demo.sh -> run_all_mvtec.sh -> scripts/sweep.py); one that passes nothing on takes no arguments.
  `sbatch --wrap "CMD"` checks CMD.
- `python -m pytest PATH ...`: each path exists. `pip install -r FILE`: the file exists.
- Other programs (wget, cd, `.`, `python -c`, `python -m venv`) are not checked.
- Placeholders: a value holding `<...>` (`--checkpoint=<file>`, `--dependency=afterany:<array job id>`) or `...`
  (`--backbone=...`) is not parsed, only its name is checked; an argument that is only `...` stands for more
  settings and is skipped.
- Relative links and images point at files that exist, and #anchors at headings that exist (GitHub's slugs).

What is run: the commands whose comment starts with `quick` (`python test.py ... --save_images=1   # quick`), in
the order of the documents, in a scratch copy of the repository where a tiny stand-in of `bash scripts/demo.sh`
has run (data/demo/disc with 64x64 images; runs/demo/disc/checkpoint.pth: resnet18, random teacher, one epoch), so
they may use what the demo leaves. At most three are allowed: each is a new process of several seconds.

Not checked: the `$ python ...` lines of the scripts' docstrings, `--name=value` spans without a program, and
whether the data a command names exists.
"""

import ast
import functools
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, make_category
from utils.config import ConfigError, parse_value

DOCUMENTS = ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
PROGRAMS = ("python", "python3", "bash", "torchrun", "sbatch")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
COMMAND_SPAN = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:%s)\s" % "|".join(PROGRAMS))
SETTING_TYPES = (int, float, bool, str, tuple, type(None))
SWEEP = "scripts/sweep.py"
MAX_QUICK = 3


# -----------------------------------------------------------------------------
# finding the commands


def fenced_blocks(text):
    """[(language, first line number, [lines])] of the ``` blocks of a markdown text."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*(\S*)", line)
        if fence and current is None:
            current = (fence.group(1), number + 1, [])
        elif fence:
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
    return blocks


def without_code_blocks(text):
    """The text with every fenced block's lines blanked, so that line numbers still count."""
    lines = text.splitlines()
    for _, first, body in fenced_blocks(text):
        for i in range(first - 2, first + len(body)):
            lines[i] = ""
    return "\n".join(lines)


def commands_in(text):
    """[(line number, command line, quick)] of a markdown text: bash block lines and inline command spans."""
    found = []
    for language, first, body in fenced_blocks(text):
        if language != "bash":
            continue
        pending, start = "", first
        for offset, line in enumerate(body):
            if not pending:
                start = first + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line, pending = pending + line, ""
            if line.strip() and not line.strip().startswith("#"):
                found.append((start, line.strip(), bool(re.search(r"#\s*quick\b", line))))
    prose = without_code_blocks(text)
    for span in re.finditer(r"`([^`]+)`", prose):
        command = " ".join(span.group(1).split())
        if COMMAND_SPAN.match(command):
            found.append((prose.count("\n", 0, span.start()) + 1, command, False))
    return found


def split_line(line):
    """A shell line as lists of words, one per simple command; `<a placeholder>` stays one word."""
    line = re.sub(r"<[^<>]*>", lambda m: m.group(0).replace(" ", "_"), line)
    commands = [[]]
    for word in shlex.split(line, comments=True):
        if word in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


# -----------------------------------------------------------------------------
# what a script accepts


@functools.lru_cache(maxsize=None)
def settings_of(script):
    """(kind, {name: default}) of a script: kind 'config' (--name=value, typed) or 'argparse' (names only)."""
    tree = ast.parse(open(os.path.join(ROOT, script)).read())
    constants, listed, set_by_sweep = {}, None, {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        try:
            value = ast.literal_eval(node.value)
        except Exception:  # not a literal: not a setting
            continue
        if name in ("config_keys", "sweep_keys") and isinstance(value, list):
            listed = value
        elif name == "SET_BY_SWEEP" and isinstance(value, dict):
            set_by_sweep = value
        elif name.islower() and not name.startswith("_") and isinstance(value, SETTING_TYPES):
            constants[name] = value
    argparse_names = [node.args[0].value[2:] for node in ast.walk(tree)
                      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                      and node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("--")]
    if argparse_names:
        return "argparse", {name: None for name in argparse_names}
    settings = {k: constants.get(k) for k in listed} if listed is not None else constants
    if script == SWEEP:  # every other --name=value goes on to train.py and test.py
        for other in ("train.py", "test.py"):
            for name, default in settings_of(other)[1].items():
                if name not in set_by_sweep:
                    settings.setdefault(name, default)
    return "config", settings


def forwarded_to(script):
    """The script a shell script passes its arguments ("$@") on to, or None."""
    text = open(os.path.join(ROOT, script)).read().replace("\\\n", " ")
    for line in text.splitlines():
        if '"$@"' not in line:
            continue
        targets = re.findall(r"[\w./-]*\w\.(?:py|sh)\b", line[:line.index('"$@"')])
        if targets:
            target = targets[-1]
            return os.path.join(os.path.dirname(script), target[1:]) if target.startswith("/") else target
    return None


def is_placeholder(value):
    return "<" in value or "..." in value


# -----------------------------------------------------------------------------
# checking a command


def check_script(script, args):
    """Problems of running `script` with `args`: a missing script, an unknown setting, a value of the wrong type."""
    if not os.path.isfile(os.path.join(ROOT, script)):
        return [f"{script}: no such script"]
    if not script.endswith(".py"):
        target = forwarded_to(script)
        if target is None:
            return [f"{script} takes no arguments"] if args else []
        return check_script(target, args)
    kind, settings = settings_of(script)
    problems = []
    for arg in args:
        if arg == "...":
            continue
        if not arg.startswith("--"):
            if not is_placeholder(arg):
                problems.append(f"{arg}: {script} takes --name=value arguments")
            continue
        name, has_value, value = arg[2:].partition("=")
        if name not in settings:
            problems.append(f"--{name}: not a setting of {script}")
        elif kind == "config" and not has_value:
            problems.append(f"--{name}: {script} takes --name=value")
        elif kind == "config" and not is_placeholder(value):
            try:
                parse_value(name, value, settings[name])
            except ConfigError as e:
                problems.append(f"{e} ({script})")
    return problems


def check_command(words):
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return []
    program, args = words[0], words[1:]
    if program in ("python", "python3") and args:
        if args[0] == "-m" and args[1:2] == ["pytest"]:
            return [f"{p}: no such test file or folder" for p in args[2:] if not p.startswith("-")
                    and not os.path.exists(os.path.join(ROOT, p.split("::")[0]))]
        if args[0].startswith("-"):
            return []  # python -c, python -m venv, ...
        return check_script(args[0], args[1:])
    if program == "torchrun":
        scripts = [i for i, a in enumerate(args) if a.endswith(".py")]
        return check_script(args[scripts[0]], args[scripts[0] + 1:]) if scripts else ["torchrun: no script"]
    if program == "bash" and args:
        return check_script(args[0], args[1:])
    if program == "sbatch":
        problems = []
        for i, arg in enumerate(args):
            if arg == "--wrap" and i + 1 < len(args):
                problems += check_line(args[i + 1])
            elif arg.startswith("--wrap="):
                problems += check_line(arg[len("--wrap="):])
        scripts = [i for i, a in enumerate(args) if a.endswith(".sh")]
        return problems + (check_script(args[scripts[0]], args[scripts[0] + 1:]) if scripts else [])
    if program == "pip":
        return [f"{args[i + 1]}: no such requirements file" for i, a in enumerate(args[:-1])
                if a == "-r" and not os.path.isfile(os.path.join(ROOT, args[i + 1]))]
    return []


def check_line(line):
    try:
        commands = split_line(line)
    except ValueError as e:
        return [f"does not parse as a shell line ({e})"]
    return [problem for words in commands for problem in check_command(words)]


def check_markdown(text, name):
    """'name:line: command: problem' for every problem of every command in a markdown text."""
    return [f"{name}:{number}: {line}: {problem}" for number, line, _ in commands_in(text) for problem in check_line(line)]


# -----------------------------------------------------------------------------
# links


def slugs(text):
    """GitHub's anchors of a markdown text's headings."""
    seen, anchors = {}, set()
    for line in without_code_blocks(text).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(document):
    text = open(os.path.join(ROOT, document)).read()
    prose = re.sub(r"`[^`]*`", "", without_code_blocks(text))
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not followed here
        path, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(document), path)) if path else document
        if not os.path.exists(os.path.join(ROOT, linked)):
            problems.append(f"{document}: ({target}): no such file")
        elif anchor and linked.endswith(".md") and anchor not in slugs(open(os.path.join(ROOT, linked)).read()):
            problems.append(f"{document}: ({target}): no such heading in {linked}")
    return problems


# -----------------------------------------------------------------------------
# the tests


def documented_commands():
    return [(document, number, line, quick) for document in DOCUMENTS
            for number, line, quick in commands_in(open(os.path.join(ROOT, document)).read())]


def test_every_documented_command_names_existing_scripts_and_settings():
    commands = documented_commands()
    scripts = {words[1] for _, _, line, _ in commands for words in split_line(line) if words[0] == "python" and len(words) > 1}
    assert {"train.py", "test.py", "export.py", "scripts/sweep.py", "scripts/prepare_dataset.py"} <= scripts
    problems = [p for document in DOCUMENTS for p in check_markdown(open(os.path.join(ROOT, document)).read(), document)]
    assert not problems, "\n".join(problems)


def test_the_check_finds_what_has_drifted():
    example = "\n".join([
        "Run `python export.py --int8=1 --nope=2` inline.",
        "```bash",
        "python train.py --epochs=3 --no_such_setting=1",
        "python train.py --epochs=three",
        "python nowhere.py --a=1",
        "bash scripts/demo.sh --categories=disc --lr=0.01 --category=disc   # --category is the sweep's to set",
        "python test.py --checkpoint=<file> --data_root=data/mvtec --backbone=...   # placeholders: names only",
        "python scripts/benchmark.py --device=cpu --bogus=1 \\",
        "    --steps=3",
        "sbatch --dependency=afterany:<array job id> --wrap \"python scripts/sweep.py --table_only=1 --gpu=0\"",
        "python -m pytest -q tests/test_docs.py tests/test_gone.py",
        "```",
    ])
    problems = check_markdown(example, "example.md")
    expected = [
        ("example.md:3:", "--no_such_setting: not a setting of train.py"),
        ("example.md:4:", "--epochs=three: expected an int"),
        ("example.md:5:", "nowhere.py: no such script"),
        ("example.md:6:", "--category: not a setting of scripts/sweep.py"),
        ("example.md:8:", "--bogus: not a setting of scripts/benchmark.py"),
        ("example.md:10:", "--gpu: not a setting of scripts/sweep.py"),
        ("example.md:11:", "tests/test_gone.py: no such test file or folder"),
        ("example.md:1:", "--nope: not a setting of export.py"),
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, (where, what) in zip(problems, expected):
        assert problem.startswith(where) and what in problem, problem


def test_links_and_anchors_resolve():
    assert "when-things-go-wrong" in slugs(open(os.path.join(ROOT, "README.md")).read())
    problems = [p for document in DOCUMENTS for p in broken_links(document)]
    assert not problems, "\n".join(problems)


@pytest.mark.slow  # each quick command is a new process
def test_quick_commands_run_after_the_demo(tmp_path):
    quick = [(document, number, line) for document, number, line, is_quick in documented_commands() if is_quick]
    assert 1 <= len(quick) <= MAX_QUICK, quick
    # a scratch copy of the repository: its files linked, data/ and runs/ its own
    for entry in os.listdir(ROOT):
        if entry not in ("data", "runs") and not entry.startswith("."):
            os.symlink(os.path.join(ROOT, entry), tmp_path / entry)
    make_category(str(tmp_path / "data" / "demo"), "disc", size=64, n_train=8, n_test_good=3, n_test_defect=2, seed=0)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), PYTHON=sys.executable)

    def run(words):
        words = [sys.executable if w in ("python", "python3") else w for w in words]
        return subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    demo = run(["python", "train.py", "--data_root=data/demo", "--category=disc", "--out_dir=runs/demo", "--backbone=resnet18",
                "--weights=none", "--image_size=64", "--batch_size=4", "--epochs=1", "--device=cpu"])
    assert demo.returncode == 0, demo.stderr
    for document, number, line in quick:
        assert "<" not in line, f"{document}:{number}: a quick command cannot hold a placeholder"
        for words in split_line(line):
            result = run(words)
            assert result.returncode == 0, f"{document}:{number}: {line}\n{result.stdout}\n{result.stderr}"
