"""
The layout of the code, read from its source (nothing is run): the root holds the commands and dataset.py, the code
map in docs/method.md names every .py file, no module imports a script, functions take what they use.
"""

import ast
import os
import re
import runpy

import pytest

from conftest import ROOT
from utils.config import script_settings

COMMANDS = {"train.py", "test.py", "predict.py", "calibrate.py", "export.py"}
SKIPPED_FOLDERS = {"data", "runs", "__pycache__"}  # the demo's data and runs, which .gitignore leaves out
MAX_POSITIONAL = 6


def python_files():
    """Every .py file of the tree, relative to the root, hidden folders (.git, .venv) and generated ones left out."""
    found = []
    for parent, folders, files in os.walk(ROOT):
        folders[:] = sorted(f for f in folders if not f.startswith(".") and f not in SKIPPED_FOLDERS)
        found += [os.path.relpath(os.path.join(parent, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(found)


def parsed(path):
    with open(os.path.join(ROOT, path)) as f:
        return ast.parse(f.read(), path)


def scripts():
    """The files run as programs: the commands and scripts/*.py."""
    return sorted(COMMANDS) + [p for p in python_files() if p.startswith("scripts" + os.sep)]


def test_the_root_holds_the_commands_and_dataset():
    assert {p for p in python_files() if os.sep not in p} == COMMANDS | {"dataset.py"}


def test_the_code_map_names_every_python_file():
    with open(os.path.join(ROOT, "docs", "method.md")) as f:
        text = f.read()
    section = text.split("## How the code is organised", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w/]+\.py)`", section))
    assert named == set(python_files()), f"missing: {set(python_files()) - named}; not there: {named - set(python_files())}"


def imported_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module


def test_no_module_imports_a_script():
    script_modules = {os.path.splitext(os.path.basename(p))[0] for p in scripts()}
    for path in python_files():
        if not path.startswith("tests" + os.sep):
            imported = set(imported_modules(parsed(path))) & script_modules
            assert not imported, f"{path} imports the script(s) {sorted(imported)}"


def test_no_test_module_imports_another():
    tests = [p for p in python_files() if p.startswith("tests" + os.sep)]
    test_modules = {os.path.splitext(os.path.basename(p))[0] for p in tests if os.path.basename(p).startswith("test_")}
    for path in tests:
        imported = set(imported_modules(parsed(path))) & test_modules
        assert not imported, f"{path} imports {sorted(imported)}: shared helpers belong in tests/conftest.py or a helpers module"


def functions(tree):
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def positional(function):
    names = [a.arg for a in function.args.posonlyargs + function.args.args]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def test_functions_take_at_most_six_positional_parameters():
    """Outside model/ (whose blocks keep torchvision's signatures) and tests/: more than 6 positional parameters are
    passed as a settings object or by keyword."""
    too_many = [f"{path}:{f.lineno} {f.name}({', '.join(positional(f))})" for path in python_files()
                if not path.startswith(("model" + os.sep, "tests" + os.sep))
                for f in functions(parsed(path)) if len(positional(f)) > MAX_POSITIONAL]
    assert not too_many, "\n".join(too_many)


def local_names(function):
    """The names a function binds itself: its parameters and whatever it assigns, imports or defines."""
    names = {a.arg for a in ast.walk(function) if isinstance(a, ast.arg)}  # nested functions' too
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not function:
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


@pytest.mark.parametrize("path", [p for p in scripts() if "apply_overrides(globals()" in open(os.path.join(ROOT, p)).read()])
def test_only_main_reads_the_settings(path):
    """A script's settings (its block between the `# ---` rulers) are read by main() alone, which passes on what
    the other functions use."""
    settings = set(script_settings(os.path.join(ROOT, path)))
    readers = []
    for node in parsed(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name != "main":
            read = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            globals_read = (read & settings) - local_names(node)
            if globals_read:
                readers.append(f"{node.name} reads {sorted(globals_read)}")
    assert not readers, f"{path}: " + "; ".join(readers)


@pytest.mark.parametrize("path", [p for p in scripts() if "apply_overrides(globals()" in open(os.path.join(ROOT, p)).read()])
def test_every_setting_can_be_given(path):
    """What --name=value may set (config_keys, the sweep's sweep_keys) is the settings block, whatever the defaults'
    types (None too), and nothing else the module defines (test.py's plots process)."""
    names = runpy.run_path(os.path.join(ROOT, path), run_name="imported")
    keys = names.get("config_keys", names.get("sweep_keys"))
    assert sorted(keys) == sorted(script_settings(os.path.join(ROOT, path)))
