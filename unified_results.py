"""
The results of one model trained on several categories (train.py --categories=...): test.py evaluates each category
into its own folder of the run, and the mean over the categories goes beside them.

    <out_dir>/<run name>/checkpoint.pth             the unified model
    <out_dir>/<run name>/<category>/results.json    each category's evaluation (and scores.csv, images/)
    <out_dir>/<run name>/results.json               the mean over the categories

    from unified_results import write_mean
    mean = write_mean(run_folder, ["bottle", "cable"], same_evaluation)

The mean results.json has the per-category files' metric names with their mean over the categories (each
category weighs the same, whatever its number of test images: ADer's "Avg"), `categories` (all the model was trained
on), `evaluated` and `missing` (those with and without a results.json of this evaluation), `per_category`
({category: {metric: value}}) and `undefined` ({metric: reason}) for a metric that some category could not define:
its mean is then over the others. Thresholds (image_f1_threshold) are per category and are not averaged.
"""

import json
import os

from utils.files import atomic_write_json
from utils.metrics import METRIC_NAMES

AVERAGED = tuple(name for name in METRIC_NAMES if not name.endswith("_threshold"))


def read_category(run_folder, category, same):
    """<run_folder>/<category>/results.json if it exists, is readable and same(results) holds, else None."""
    try:
        with open(os.path.join(run_folder, category, "results.json")) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    return results if same(results) else None


def mean_results(per_category):
    """{metric: mean over the categories that define it} and {metric: why it is over fewer of them}, from
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
    checkpoint, image size and map mode); `extra` is copied in (checkpoint, method, ...). Returns what it wrote."""
    per_category = {c: r for c in categories if (r := read_category(run_folder, c, same)) is not None}
    means, undefined = mean_results(per_category)
    results = {"category": "", "categories": list(categories), **means,
               "evaluated": list(per_category), "missing": [c for c in categories if c not in per_category],
               "per_category": {c: {name: r.get(name) for name in AVERAGED} for c, r in per_category.items()},
               "undefined": undefined, **(extra or {})}
    atomic_write_json(os.path.join(run_folder, "results.json"), results)
    return results
