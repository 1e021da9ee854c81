"""What train.py and test.py share: settings, files, seeds, the anomaly map, metrics and pictures."""
