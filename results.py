"""
The results layer: what run folders hold, read back, and results.md and report.html written from it.
scripts/sweep.py writes them with it after every category; test.py --images and export.py find an evaluation's
threshold with it.

    states = collect("runs", ["bottle", "screw"], train_config)   # {category: Result(state, results, sweep)}
    text = write_results_md("runs", "data/mvtec", ["bottle", "screw"], train_config)   # runs/results.md, report.html
    evaluation, problem = find_evaluation("runs/bottle", checkpoint, image_size=256, map_mode="add")

A run folder <out_dir>/<category>/ holds checkpoint.pth, config.json and loss.csv (train.py), results.json,
scores.csv, curves.json and report.html (test.py), sweep.json and log.txt (scripts/sweep.py). `train_config` is train.py's settings as a dict (utils.config
.script_settings("train.py") with the --name=value overrides): a category's results count for it when they were
trained with its values of the checkpoint's resume_keys, epochs and method; the others show as "other settings".
The reference rows under ours and their sources are known_datasets.py's.
"""

import json
import os
from collections import namedtuple
from datetime import datetime

from checkpoints import LEGACY_VALUES, resume_keys, run_dir
from known_datasets import MVTEC_AD, OFFICIAL_EPOCHS, dataset_for
from report import write_sweep_report
from utils.config import ConfigError
from utils.files import atomic_write_text

# state: done | failed | running | interrupted | other settings | not run; results: results.json (test.py), sweep:
# sweep.json (scripts/sweep.py), each None where missing
Result = namedtuple("Result", "state results sweep")
COMPARED_KEYS = ["epochs", "method"]  # with the checkpoint's resume_keys: a result counts when trained with the requested values
METHOD_LABELS = {"rd": "RD", "rd++": "RD++"}
TABLES = [("Image-Level AUC", "image_auroc"), ("Pixel-Level AUC", "pixel_auroc"), ("Image F1 Score", "image_f1"),
          ("AUPRO", "pixel_aupro")]


def as_json(value):
    """The value as it reads back from a JSON file (tuples become lists), so saved and requested values compare."""
    return json.loads(json.dumps(value))


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # missing, or half-written by a run killed outside atomic_write
        return None


def requested_config(train_config, category):
    """The settings of train.py's config (a dict) that a category's results must have been trained with to count."""
    keys = resume_keys(train_config["method"]) + COMPARED_KEYS
    requested = {k: as_json(category if k == "category" else train_config[k]) for k in keys}
    if train_config["official_epochs"] and category in OFFICIAL_EPOCHS:  # train.py trains (and records) these
        requested["epochs"] = OFFICIAL_EPOCHS[category]
    return requested


def differences(trained, requested):
    """'name=trained (requested value)' for each requested setting a run was not made with."""
    # runs from before RD++ was added are RD's; those from before a train.py setting existed had its legacy value
    trained = {"method": "rd", **LEGACY_VALUES, **(trained or {})}
    return [f"{k}={trained.get(k)!r} (requested {v!r})" for k, v in requested.items() if as_json(trained.get(k)) != v]


def category_state(out_dir, category, requested):
    """Result(state, results, sweep): state is done | failed | running | interrupted | other settings | not run.
    The latest sweep attempt has the last word: a category being redone or that failed shows no older numbers."""
    folder = run_dir(out_dir, category)
    info = read_json(os.path.join(folder, "sweep.json"))
    results = read_json(os.path.join(folder, "results.json"))
    if info and not differences(info.get("config"), requested) and info.get("status") != "done":
        return Result(info.get("status"), results, info)
    if results and not differences(results.get("train_config"), requested):
        return Result("done", results, info)
    return Result("other settings" if results else "not run", results, info)


def ordered(names):
    """The known dataset's order for its categories (known_datasets.py; MVTec AD: textures, then objects), then any others sorted."""
    known = dataset_for(names)
    first = [c for c in known.categories if c in names] if known else []
    return first + sorted(set(names) - set(first))


def title(category):
    return category.replace("_", " ").title()


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " :---: |" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def average_cell(values, n_columns):
    if not values:
        return "-"
    mean = f"{sum(values) / len(values):.3f}"
    return mean if len(values) == n_columns else f"{mean} ({len(values)}/{n_columns})"


def our_row(label, key, columns, states):
    cells, values = [], []
    for c in columns:
        state, results, _ = states[c]
        value = results.get(key) if state == "done" else None
        cells.append(f"{value:.3f}" if value is not None else "n/a" if state == "done" else "failed" if state == "failed" else "-")
        if value is not None:
            values.append(value)
    return [label, average_cell(values, len(columns)), *cells]


def metric_rows(key, columns, states, backbone, method):
    """Our row for one metric, then the known dataset's reference rows that have it."""
    rows = [our_row(f"ours, {METHOD_LABELS[method]} ({backbone})", key, columns, states)]
    if key == "pixel_aupro" and any(states[c][0] == "done" and states[c][1].get("pixel_pro_paper") is not None for c in columns):
        rows.append(our_row("ours, the official script's per-image PRO (compare with the paper's PRO)", "pixel_pro_paper", columns, states))
    known = dataset_for(columns)
    for reference in known.references if known else ():
        value = reference.values.get(key)
        if isinstance(value, tuple):  # a value per category
            per_category = dict(zip(known.categories, value))
            listed = [c for c in columns if c in per_category]
            # averaged over the categories our Avg counts, so the two Avg cells compare like with like
            counted = [c for c in listed if states[c][0] == "done" and states[c][1].get(key) is not None]
            averaged = counted or listed
            mean = sum(per_category[c] for c in averaged) / len(averaged)
            rows.append([reference.label, f"{mean:.3f}", *(f"{per_category[c]:.3f}" if c in per_category else "" for c in columns)])
        elif value is not None:  # a mean over the dataset's categories
            rows.append([reference.label, f"{value:.3f}", *([""] * len(columns))])
    return rows


def collect(out_dir, categories, train_config):
    """{category: Result(state, results, sweep)} of these categories and of every other category under out_dir made
    with the same settings (by other sweeps into this out_dir, e.g. the jobs of a Slurm array), from
    <out_dir>/<category>/{results,sweep}.json alone; in the known dataset's order."""
    states = {c: category_state(out_dir, c, requested_config(train_config, c)) for c in categories}
    if os.path.isdir(out_dir):
        for name in sorted(os.listdir(out_dir)):
            if name not in states and os.path.isdir(os.path.join(out_dir, name)):
                state = category_state(out_dir, name, requested_config(train_config, name))
                if state.state not in ("not run", "other settings"):
                    states[name] = state
    return {c: states[c] for c in ordered(states)}


def markdown(blocks):
    """results.md's text from a document's blocks (see results_document)."""
    lines = []
    for kind, *content in blocks:
        if kind == "table":
            lines += markdown_table(*content[:2])
        elif kind == "ul":
            lines += [f"- {item}" for item in content[0]]
        else:
            lines.append({"h1": "# ", "h2": "## ", "p": ""}[kind] + content[0])
        lines.append("")
    return "\n".join(lines)


def results_md(out_dir, data_root, categories, train_config):
    """results.md's text: a table per metric (ours and the reference rows), wall times and notes, from collect()."""
    return markdown(results_document(out_dir, data_root, categories, train_config))


def results_document(out_dir, data_root, categories, train_config):
    """The tables of results.md and report.html as blocks: ('h1' | 'h2' | 'p', text), ('ul', [items]) or ('table',
    header, rows, the category of each column or None), from collect()."""
    states = collect(out_dir, categories, train_config)
    columns = list(states)
    known = dataset_for(columns)
    header = ["", "Avg", *(title(c) for c in columns)]
    linked = [None, None, *columns]  # report.html links the cells of a category's column to its report
    cfg = train_config
    counts = {s: sum(states[c][0] == s for c in columns) for s in ("done", "failed", "running", "interrupted")}
    blocks = [("h1", f"{'Reverse Distillation' if cfg['method'] == 'rd' else 'RD++ (Revisiting Reverse Distillation)'} on {data_root}"
               + (f" ({known.name})" if known else "")),
              ("p", "Trained with " + ", ".join(f"{k} {tuple(v) if isinstance(v, list) else v}" for k, v in requested_config(cfg, "").items() if k != "category")
               + ". "
               f"{counts['done']} of {len(columns)} categories done"
               + "".join(f", {n} {s}" for s, n in counts.items() if n and s != "done")
               + f". Per category: {out_dir}/<category>/ (results.json, report.html, log.txt). "
               f"Written at {datetime.now():%Y-%m-%d %H:%M:%S}.")]
    for name, key in TABLES:
        blocks += [("h2", name), ("table", header, metric_rows(key, columns, states, cfg["backbone"], cfg["method"]), linked)]
        if key == "pixel_auroc" and known is MVTEC_AD:
            blocks.append(("p", "anomalib's published table prints Avg 0.969 for pixel AUROC, but its 15 per-category values "
                           "average 0.9735; its Avg here is the mean of the values in its row."))
    if known and known.references:
        sources = "; ".join(dict.fromkeys(reference.source for reference in known.references))
        blocks.append(("p", f"Reference rows: {sources}."
                       + (" anomalib's Avg covers the same categories as ours; the paper and RD++ report only 15-category means."
                          " Our rows come from test.py's results.json." if known is MVTEC_AD else "")))
    elif known:
        blocks.append(("p", f"No reference rows: no published RD or RD++ numbers for {known.name} were found to cite."))
    if any(states[c][0] == "done" and "no ground truth masks" in str(states[c][1].get("undefined")) for c in columns):
        blocks.append(("p", "n/a in the pixel tables: a category without a ground_truth folder is evaluated on its image labels only."))

    def seconds(c, key):
        state, _, info = states[c]
        return info.get(key) if state == "done" and info and info.get(key) is not None else None

    wall_rows = []
    for label, keys in (("train", ["train_seconds"]), ("test", ["test_seconds"]), ("train + test", ["train_seconds", "test_seconds"])):
        values = [None if any(seconds(c, k) is None for k in keys) else sum(seconds(c, k) for k in keys) for c in columns]
        known = [v for v in values if v is not None]
        total = f"{sum(known):.1f}" + ("" if len(known) == len(columns) else f" ({len(known)}/{len(columns)})") if known else "-"
        wall_rows.append([f"{label} (s)", total, *(f"{v:.1f}" if v is not None else "failed" if states[c][0] == "failed" else "-"
                                                     for c, v in zip(columns, values))])
    blocks += [("h2", "Wall time"), ("table", ["", "Total", *(title(c) for c in columns)], wall_rows, linked),
               ("p", "Training time sums every attempt that built the checkpoint (an interrupted run resumed counts both); "
                "each includes starting Python and loading the data.")]

    notes = [f"{c}: failed ({states[c][2].get('reason', '')}), log: {states[c][2].get('log')}" for c in columns if states[c][0] == "failed"]
    notes += [f"{c}: {states[c][0]}" for c in columns if states[c][0] in ("running", "interrupted")]
    notes += [f"{c}: results.json is from other settings, not shown: {', '.join(differences(states[c][1].get('train_config'), requested_config(cfg, c)))}"
              for c in columns if states[c][0] == "other settings"]
    if notes:
        blocks += [("h2", "Notes"), ("ul", notes)]
    return blocks


def write_results_md(out_dir, data_root, categories, train_config):
    """<out_dir>/results.md (results_md) and <out_dir>/report.html (the same tables, each cell of a category linking
    to its report.html: report.write_sweep_report), written atomically; returns results.md's text."""
    blocks = results_document(out_dir, data_root, categories, train_config)
    text = markdown(blocks)
    atomic_write_text(os.path.join(out_dir, "results.md"), text + "\n")
    write_sweep_report(out_dir, blocks)
    return text


def find_evaluation(folder, checkpoint, image_size, map_mode):
    """(results, problem): results.json in folder if it is test.py's evaluation of this checkpoint at this image_size
    and map_mode, else {}; problem says why it holds no image_f1_threshold (None when it does). test.py --images and
    export.py take the threshold and the heatmap range from it."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return {}, f"{path} does not exist"
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON; evaluate again with python test.py --checkpoint={checkpoint}") from None
    same = (os.path.realpath(saved.get("checkpoint", "")) == os.path.realpath(checkpoint)
            and saved.get("image_size") == image_size and saved.get("map_mode") == map_mode)
    evaluation = saved if same else {}
    if evaluation.get("image_f1_threshold") is None:
        return evaluation, f"{path} holds no image_f1_threshold of checkpoint={checkpoint} at image_size={image_size}, map_mode={map_mode}"
    return evaluation, None
