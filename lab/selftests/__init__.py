"""The kernel's own KVM selftests in the lab (`kvmlab selftests`): what runs and what is
expected, as data (selection.py), judging a run (judge.py), and running them in L1 with
traces (run.py). The build is lab/builder/selftests.py; the TAP judge is
lab/analysis/ktap.py."""
