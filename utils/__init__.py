"""Helpers several rooms share: --name=value settings, files and images, seeds and devices, memory decisions, torch
files, run folders and checkpoint writing, the decoded-image store, the known datasets, exported-model runtimes."""
