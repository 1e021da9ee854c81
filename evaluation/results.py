"""
The results layer: what run folders hold, read back, and results.md and report.html written from it.
scripts/sweep.py writes them with it after every category; predict.py and export.py find an evaluation's
threshold with it.

    states = collect("runs", ["bottle", "screw"], train_config)   # {category: Result(state, results, sweep)}
    text = write_results_md("runs", "data/mvtec", ["bottle", "screw"], train_config)   # runs/results.md, report.html
    evaluation, problem = find_evaluation("runs/bottle", checkpoint, image_size=256, map_mode="add")
    mean = write_mean("runs/bottle+cable", ["bottle", "cable"], same)   # a unified model's mean over its categories

A run folder <out_dir>/<category>/ holds checkpoint.pth, config.json and loss.csv (train.py), results.json,
scores.csv, curves.json and report.html (test.py), sweep.json and log.txt (scripts/sweep.py). `train_config` is
train.py's settings as a dict (utils.config
.script_settings("train.py") with the --name=value overrides): a category's results count for it when they were
trained with its values of the checkpoint's resume_keys, epochs and method; the others show as "other settings".
The reference rows under ours and their sources are utils/known_datasets.py's.

A unified run (one model of several categories, train.py --categories=...; `run` its name, utils.runs.run_name)
holds checkpoint.pth, config.json, log.txt and sweep.json (the training), results.json (the mean over the
categories, write_mean) and results.md in <out_dir>/<run>/, and each category's files in <out_dir>/<run>/<category>/.
Its results.md has one row for the model, per category and the mean, beside ADer's published unified rows where the
categories are all of a dataset ADer benchmarks.

The mean results.json has the per-category files' metric names with their mean over the categories (each category
weighs the same, whatever its number of test images: ADer's "Avg"), `categories` (all the model was trained on),
`evaluated` and `missing` (those with and without a results.json of this evaluation), `per_category` ({category:
{metric: value}}) and `undefined` ({metric: reason}) for a metric that some category could not define: its mean is
then over the others. Thresholds (image_f1_threshold) are per category and are not averaged.
"""

import json
import os
from collections import namedtuple
from datetime import datetime

from evaluation.metrics import METRIC_NAMES
from evaluation.report import write_sweep_report
from utils.config import ConfigError
from utils.files import atomic_write_json, atomic_write_text
from utils.known_datasets import ADER_UNIFIED, DATASETS, MVTEC_AD, OFFICIAL_EPOCHS, dataset_for
from utils.runs import resume_keys, run_dir, saved_setting

# state: done | failed | running | interrupted | other settings | not run; results: results.json (test.py), sweep:
# sweep.json (scripts/sweep.py), each None where missing
Result = namedtuple("Result", "state results sweep")
COMPARED_KEYS = ["epochs", "method"]  # with the checkpoint's resume_keys: a result counts when trained with the requested values
METHOD_LABELS = {"rd": "RD", "rd++": "RD++"}
TABLES = [("Image-Level AUC", "image_auroc"), ("Pixel-Level AUC", "pixel_auroc"), ("Image F1 Score", "image_f1"),
          ("AUPRO", "pixel_aupro"), ("mIoU-max (ADer)", "pixel_iou_max"), ("mAD (ADer)", "mad")]
# MVTec AD 2's, after those: for its categories, or where a result has them (test.py --protocol=mvtec_ad_2)
AD2_TABLES = [("AUPRO up to FPR 0.05 (MVTec AD 2)", "pixel_aupro_05"), ("SegF1 (MVTec AD 2)", "seg_f1")]
AVERAGED = tuple(name for name in METRIC_NAMES if not name.endswith("_threshold"))  # a unified model's mean has these


def as_json(value):
    """The value as it reads back from a JSON file (tuples become lists), so saved and requested values compare."""
    return json.loads(json.dumps(value))


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):  # missing, or half-written by a run killed outside atomic_write
        return None


def requested_config(train_config, category, unified_categories=None):
    """The settings of train.py's config (a dict) that a category's results must have been trained with to count;
    for a unified run (unified_categories: the sorted list) what train.py --categories=... records."""
    keys = resume_keys(train_config["method"]) + COMPARED_KEYS
    run_settings = ({"category": "", "categories": unified_categories} if unified_categories
                    else {"category": category, "categories": [category]})  # what train.py --category=C records
    requested = {k: as_json(run_settings.get(k, train_config[k])) for k in keys}
    if train_config["official_epochs"] and category in OFFICIAL_EPOCHS and not unified_categories:  # train.py trains (and records) these
        requested["epochs"] = OFFICIAL_EPOCHS[category]
    return requested


def differences(trained, requested):
    """'name=trained (requested value)' for each requested setting a run was not made with."""
    # runs from before RD++ was added are RD's; those from before a train.py setting existed had its legacy value
    trained = {"method": "rd", **(trained or {})}
    saved = {k: saved_setting(trained, k) for k in requested}
    return [f"{k}={saved[k]!r} (requested {v!r})" for k, v in requested.items() if as_json(saved[k]) != v]


def result_folder(out_dir, category, run=None):
    """Where a category's results.json, sweep.json and log.txt are: <out_dir>/<category>, or <out_dir>/<run>/<category>
    for the categories of a unified run."""
    return os.path.join(out_dir, run, category) if run else run_dir(out_dir, category)


def table_path(out_dir, run=None):
    """results.md: <out_dir>/results.md, or <out_dir>/<run>/results.md for a unified run."""
    return os.path.join(out_dir, run, "results.md") if run else os.path.join(out_dir, "results.md")


def category_state(out_dir, category, requested, run=None):
    """Result(state, results, sweep): state is done | failed | running | interrupted | other settings | not run.
    The latest sweep attempt has the last word: a category being redone or that failed shows no older numbers."""
    folder = result_folder(out_dir, category, run)
    info = read_json(os.path.join(folder, "sweep.json"))
    results = read_json(os.path.join(folder, "results.json"))
    if info and not differences(info.get("config"), requested) and info.get("status") != "done":
        return Result(info.get("status"), results, info)
    if results and not differences(results.get("train_config"), requested):
        return Result("done", results, info)
    return Result("other settings" if results else "not run", results, info)


def ordered(names):
    """The known dataset's order for its categories (utils/known_datasets.py; MVTec AD: textures, then objects), then any others sorted."""
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


def unified_rows(key, columns, states, backbone, method):
    """A unified run's rows for one metric: ours, then ADer's published mean of the same method when the categories are
    all of a dataset it benchmarks (one-category references would not compare with one model of them all)."""
    rows = [our_row(f"ours, {METHOD_LABELS[method]} ({backbone}), one model of the {len(columns)} categories", key, columns, states)]
    known = dataset_for(columns)
    name = next((k for k, d in DATASETS.items() if d is known), None)
    reference = ADER_UNIFIED.get((name, method)) if known and set(known.categories) == set(columns) else None
    if reference is not None and reference.values.get(key) is not None:
        rows.append([reference.label, f"{reference.values[key]:.3f}", *([""] * len(columns))])
    return rows


def collect(out_dir, categories, train_config, run=None):
    """{category: Result(state, results, sweep)} of these categories and of every other category under out_dir made
    with the same settings (by other sweeps into this out_dir, e.g. the jobs of a Slurm array), from
    <out_dir>/<category>/{results,sweep}.json alone; in the known dataset's order. For a unified run (`run` its name),
    of these categories in <out_dir>/<run>/<category>/."""
    unified_categories = sorted(categories) if run else None
    states = {c: category_state(out_dir, c, requested_config(train_config, c, unified_categories), run) for c in categories}
    if os.path.isdir(out_dir) and not run:
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


def results_md(out_dir, data_root, categories, train_config, run=None):
    """results.md's text: a table per metric (ours and the reference rows), wall times and notes, from collect()."""
    return markdown(results_document(out_dir, data_root, categories, train_config, run))


def results_document(out_dir, data_root, categories, train_config, run=None):
    """The tables of results.md and report.html as blocks: ('h1' | 'h2' | 'p', text), ('ul', [items]) or ('table',
    header, rows, the category of each column or None), from collect(); for a unified run (`run` its name) the one
    model's row per category, its training time once."""
    states = collect(out_dir, categories, train_config, run)
    unified_categories = sorted(categories) if run else None
    columns = list(states)
    known = dataset_for(columns)
    header = ["", "Avg", *(title(c) for c in columns)]
    linked = [None, None, *columns]  # report.html links the cells of a category's column to its report
    cfg = train_config
    counts = {s: sum(states[c][0] == s for c in columns) for s in ("done", "failed", "running", "interrupted")}
    blocks = [("h1", f"{'Reverse Distillation' if cfg['method'] == 'rd' else 'RD++ (Revisiting Reverse Distillation)'} on {data_root}"
               + (f" ({known.name})" if known else "")),
              ("p", "Trained with " + ", ".join(f"{k} {tuple(v) if isinstance(v, list) else v}" for k, v in requested_config(cfg, "").items()
                                                if k not in ("category", "categories"))
               + ". "
               f"{counts['done']} of {len(columns)} categories done"
               + "".join(f", {n} {s}" for s, n in counts.items() if n and s != "done")
               + (f". One model of all {len(columns)} categories: {out_dir}/{run}/ (checkpoint.pth, log.txt, results.json: the mean), "
                  f"per category: {out_dir}/{run}/<category>/ (results.json, report.html, log.txt). " if run else
                  f". Per category: {out_dir}/<category>/ (results.json, report.html, log.txt). ")
               + f"Written at {datetime.now():%Y-%m-%d %H:%M:%S}.")]
    ader_rows = False
    ad2 = known is DATASETS["mvtec_ad_2"] or any(states[c][0] == "done" and "seg_f1" in states[c][1] for c in columns)
    for name, key in TABLES + (AD2_TABLES if ad2 else []):
        rows = (unified_rows if run else metric_rows)(key, columns, states, cfg["backbone"], cfg["method"])
        ader_rows = ader_rows or (run and len(rows) > 1)
        blocks += [("h2", name), ("table", header, rows, linked)]
        if key == "pixel_auroc" and known is MVTEC_AD and not run:
            blocks.append(("p", "anomalib's published table prints Avg 0.969 for pixel AUROC, but its 15 per-category values "
                           "average 0.9735; its Avg here is the mean of the values in its row."))
    if ader_rows:
        blocks.append(("p", f"Reference rows: {ADER_UNIFIED[next(k for k, d in DATASETS.items() if d is known), cfg['method']].source}. "
                       "One model per dataset; ADer's RD has other teacher weights and a narrower OCBE, and its pixel metrics are "
                       "binned. Our rows come from test.py's results.json."))
    elif run:
        blocks.append(("p", "No reference rows: ADer's benchmark publishes unified rows for whole datasets only."))
    elif known and known.references:
        sources = "; ".join(dict.fromkeys(reference.source for reference in known.references))
        blocks.append(("p", f"Reference rows: {sources}."
                       + (" anomalib's Avg covers the same categories as ours; the paper and RD++ report only 15-category means."
                          " Our rows come from test.py's results.json." if known is MVTEC_AD else "")
                       + (" MVTec AD 2's published rows are on its private test sets (TEST_priv, TEST_priv,mix), which only MVTec's "
                          "evaluation server scores (scripts/mvtec_ad2_submission.py writes a submission); ours are on test_public, "
                          "with the same rules (native size, the validation threshold): a different split, not a one-to-one comparison."
                          if known is DATASETS["mvtec_ad_2"] else "")))
    elif known:
        blocks.append(("p", f"No reference rows: no published RD or RD++ numbers for {known.name} were found to cite."))
    blocks.append(("p", "mIoU-max and mAD are the ADer benchmark's: IoU-max over 21 thresholds of the maps min-max normalised "
                   "over the category, and the mean of image AUROC, AP, F1-max, pixel AUROC, AP, F1-max (those 21 thresholds) "
                   "and AUPRO."))
    if any(states[c][0] == "done" and "no ground truth masks" in str(states[c][1].get("undefined")) for c in columns):
        blocks.append(("p", "n/a in the pixel tables: a category without a ground_truth folder is evaluated on its image labels only."))

    def seconds(c, key):
        state, _, info = states[c]
        return info.get(key) if state == "done" and info and info.get(key) is not None else None

    wall_rows = []
    if run:  # one training for all the categories, then an evaluation per category
        train_info = read_json(os.path.join(out_dir, run, "sweep.json")) or {}
        train_seconds = train_info.get("train_seconds") if train_info.get("status") == "done" else None
        tests = [seconds(c, "test_seconds") for c in columns]
        known = [v for v in tests if v is not None]
        test_total = f"{sum(known):.1f}" + ("" if len(known) == len(columns) else f" ({len(known)}/{len(columns)})") if known else "-"
        wall_rows = [["train (s), all categories", f"{train_seconds:.1f}" if train_seconds is not None else "-", *([""] * len(columns))],
                     ["test (s)", test_total, *(f"{v:.1f}" if v is not None else "failed" if states[c][0] == "failed" else "-"
                                                for c, v in zip(columns, tests))]]
        if train_seconds is not None and known:
            wall_rows.append(["train + test (s)", f"{train_seconds + sum(known):.1f}", *([""] * len(columns))])
    for label, keys in () if run else (("train", ["train_seconds"]), ("test", ["test_seconds"]), ("train + test", ["train_seconds", "test_seconds"])):
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
    notes += [f"{c}: results.json is from other settings, not shown: "
              f"{', '.join(differences(states[c][1].get('train_config'), requested_config(cfg, c, unified_categories)))}"
              for c in columns if states[c][0] == "other settings"]
    if notes:
        blocks += [("h2", "Notes"), ("ul", notes)]
    return blocks


def write_results_md(out_dir, data_root, categories, train_config, run=None):
    """results.md (results_md) and report.html beside it (the same tables, each cell of a category linking to its
    report.html: report.write_sweep_report), in out_dir, or in <out_dir>/<run>/ for a unified run; written
    atomically; returns results.md's text."""
    blocks = results_document(out_dir, data_root, categories, train_config, run)
    text = markdown(blocks)
    path = table_path(out_dir, run)
    atomic_write_text(path, text + "\n")
    write_sweep_report(os.path.dirname(path), blocks)
    return text


def read_category(run_folder, category, same):
    """<run_folder>/<category>/results.json if it exists, is readable and same(results) holds, else None."""
    results = read_json(os.path.join(run_folder, category, "results.json"))
    return results if results is not None and same(results) else None


def mean_results(per_category):
    """({metric: mean over the categories that define it}, {metric: why it is over fewer of them}) of
    {category: results}."""
    means, undefined = {}, {}
    for name in AVERAGED:
        values = [r[name] for r in per_category.values() if r.get(name) is not None]
        means[name] = sum(values) / len(values) if values else None
        without = [c for c, r in per_category.items() if r.get(name) is None]
        if without:
            undefined[name] = (f"undefined for {', '.join(without)}: the mean of the other {len(values)}" if values
                               else "undefined for every category")
    return means, undefined


def write_mean(run_folder, categories, same, extra=None):
    """Write <run_folder>/results.json: the mean over the categories' results.json for which same(results) holds (this
    checkpoint, image size and map mode), as the module docstring says; `extra` is copied in (checkpoint, method,
    ...). Returns what it wrote."""
    per_category = {c: r for c in categories if (r := read_category(run_folder, c, same)) is not None}
    means, undefined = mean_results(per_category)
    results = {"category": "", "categories": list(categories), **means,
               "evaluated": list(per_category), "missing": [c for c in categories if c not in per_category],
               "per_category": {c: {name: r.get(name) for name in AVERAGED} for c, r in per_category.items()},
               "undefined": undefined, **(extra or {})}
    atomic_write_json(os.path.join(run_folder, "results.json"), results)
    return results


def find_evaluation(folder, checkpoint, image_size, map_mode):
    """(results, problem): results.json in folder if it is test.py's evaluation of this checkpoint at this image_size
    and map_mode, else {}; problem says why it holds no image_f1_threshold (None when it does). predict.py and
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
