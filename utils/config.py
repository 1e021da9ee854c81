"""
`--name=value` command-line overrides of a script's module-level settings, nanoGPT style but as a function.

    config_keys = list(script_settings(__file__))   # the names of a script's settings block
    apply_overrides(globals(), sys.argv[1:], config_keys)
    defaults = script_settings("train.py")  # {name: default} of a script's settings, read without running it

Values are parsed with ast.literal_eval (a bare word stays a string) and must have the default's type;
an int is accepted for a float, 0/1 for a bool, anything for a None default. A size (image_size) is an int, a
square, or a pair `--image_size=768,1024` (height, width); it is kept as an int for a square and as [height, width]
otherwise, the form config.json and results.json hold, so that two sizes compare with ==. Errors are ConfigErrors.
"""

import ast
import errno
import sys


PAIR_SETTINGS = ("image_size",)  # int settings that also take a (height, width) pair: --image_size=768,1024


class ConfigError(ValueError):
    """A user setting (a file, a path, a --name=value) is wrong; the message says which and why."""


def size_hw(size):
    """(height, width) of a size: an int (a square) or a [height, width] pair."""
    return (size, size) if isinstance(size, int) else tuple(size)


def canonical_size(size):
    """A size as settings hold it: an int for a square, [height, width] otherwise."""
    height, width = size_hw(size)
    return height if height == width else [height, width]


def check_size(name, size, multiple=32):
    """A ConfigError unless `size` (setting `name`) is an int or a pair of ints, each a positive multiple of `multiple`."""
    pair = isinstance(size, (list, tuple)) and len(size) == 2
    sides = size_hw(size) if pair or isinstance(size, int) else ()
    if not sides or not all(isinstance(s, int) and not isinstance(s, bool) and s >= multiple and s % multiple == 0 for s in sides):
        shown = ",".join(map(str, size)) if isinstance(size, (list, tuple)) else size
        raise ConfigError(f"--{name}={shown}: must be a positive multiple of {multiple}, or a pair of them HEIGHT,WIDTH like 768,1024")


def parse_value(name, raw, default):
    if isinstance(default, str):
        return raw  # a str setting takes the text as it is: --category=123 stays '123'
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if default is None or value is None:
        return value
    if name in PAIR_SETTINGS and isinstance(value, (tuple, list)):
        if len(value) == 2 and all(type(v) is int for v in value):
            return canonical_size(value)
        raise ConfigError(f"--{name}={raw}: expected an int like {default!r} or a pair HEIGHT,WIDTH like 768,1024")
    if isinstance(default, bool):
        if value in (0, 1) and not isinstance(value, float):
            return bool(value)
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, tuple):
        try:
            if isinstance(value, (tuple, list)) and len(value) == len(default):
                return tuple(parse_value(name, repr(v), d) for v, d in zip(value, default))
        except ConfigError:
            pass  # a wrong element: report the whole value below
    elif type(value) is type(default):
        return value
    if name in PAIR_SETTINGS:
        raise ConfigError(f"--{name}={raw}: expected an int like {default!r} or a pair HEIGHT,WIDTH like 768,1024")
    kind = type(default).__name__
    raise ConfigError(f"--{name}={raw}: expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} like {default!r}")


def apply_overrides(settings, argv, keys, moved=None):
    """Set settings[name] = value for each --name=value in argv; only names in `keys` may be set. `moved`: {name: where
    that setting went} for settings a command no longer has (test.py's --images is predict.py's now)."""
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"{arg}: arguments are --name=value, valid names: {', '.join(keys)}")
        name, raw = arg[2:].split("=", 1)
        if moved and name in moved:
            raise ConfigError(f"--{name}: {moved[name]}")
        if name not in keys:
            raise ConfigError(f"--{name}: unknown setting, valid names: {', '.join(keys)}")
        settings[name] = parse_value(name, raw, settings[name])


def os_error_line(error):
    """'<path>: <reason>' for an OSError (a rename names both paths), its message if it names no path."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{error.filename or 'output'}: no space left on the disk; the files written before are intact"
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    reason = error.strerror or (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{paths}: {reason}" if paths else reason


def script_settings(path):
    """{name: default} of the settings block of a script (the `name = literal  # comment` lines between its first
    two `# ---` rulers), read from its source without importing it: each command's config_keys are its own block's
    names, and scripts/sweep.py learns train.py's and test.py's settings this way, with no script importing another."""
    with open(path) as f:
        source = f.read()
    rulers = [i + 1 for i, line in enumerate(source.splitlines()) if line.startswith("# ---")][:2]
    if len(rulers) < 2:
        raise ValueError(f"{path}: no settings block between two '# ---' rulers")
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and rulers[0] < node.lineno < rulers[1]}


def run_cli(main, debug):
    """Run a script's main(): a user error (ConfigError), a stopped run (FloatingPointError) or an OS error
    (a full disk, a folder that turned read-only) prints one line and exits non-zero (2 for a user error, 1
    otherwise), without a traceback unless debug() is true (--debug=1)."""
    try:
        main()
    except (ConfigError, FloatingPointError, OSError) as e:
        if debug():
            raise
        print(f"error: {os_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, ConfigError) else 1)
