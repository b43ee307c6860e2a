"""Scenarios: the data (model.py: one YAML file each, checked when loaded), where they are
found (suites.py), one run in L1 through the share (staging.py), running them in a lab
(runner.py, suite.py) and `kvmlab trace` around any command (adhoc.py)."""

#: summary.json's "format": bump when a reader of saved results must tell old from new.
RESULTS_FORMAT = "kvmlab-results/1"
