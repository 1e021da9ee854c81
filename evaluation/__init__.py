"""Evaluation: the metrics (image and pixel AUROC, F1-max, AP, AUPRO, ADer's), the threshold a run uses, picture
strips, the results layer (results.json read back, results.md) and the HTML reports with their plots."""
