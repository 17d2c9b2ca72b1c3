"""roiops benchmark suite: `roiops-bench speed` and `roiops-bench misalign` (see cli.py)."""
