"""Bad input, one table: each case runs the real command line and must give exit status 2,
one line on stderr naming what is wrong and where, and write nothing (no lab state, no
results, no cache entry, nothing in the working directory)."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.core.paths import cache_dir

GOOD_SCENARIO = "memslots: [{ipa: 1G, size: 8M}]\n"

#: id: (arguments, files to write first {name: text}, extra environment, what stderr says).
#: "{tmp}" in arguments and texts is the case's directory.
CASES = {
    "malformed-config-yaml": (["up", "-c", "{tmp}/lab.yaml"], {"lab.yaml": "lab: [1, 2\n"},
                              {}, ["{tmp}/lab.yaml: malformed YAML at line 2"]),
    "unknown-config-key": (["up", "-c", "{tmp}/lab.yaml"], {"lab.yaml": "lab: {nmae: x}\n"},
                           {}, ["{tmp}/lab.yaml: lab.nmae: unknown key", "known keys in lab: name"]),
    "unknown-config-section": (["up", "-c", "{tmp}/lab.yaml"], {"lab.yaml": "labs: {name: x}\n"},
                               {}, ["{tmp}/lab.yaml: labs: unknown section"]),
    "wrong-type": (["up", "-c", "{tmp}/lab.yaml"], {"lab.yaml": "lab: {cpus: two}\n"},
                   {}, ["{tmp}/lab.yaml: lab.cpus: expected an integer from 1 to 16, got 'two'"]),
    "zero-cpus": (["up", "--cpus", "0"], {}, {}, ["option --cpus: lab.cpus: expected an integer from 1 to 16, got 0"]),
    "negative-cpus": (["up", "--cpus", "-2"], {}, {}, ["lab.cpus", "got -2"]),
    "huge-cpus": (["up", "-c", "{tmp}/lab.yaml"], {"lab.yaml": "lab: {cpus: 100000}\n"}, {},
                  ["{tmp}/lab.yaml: lab.cpus: expected an integer from 1 to 16, got 100000"]),
    "zero-memory": (["up", "--memory", "0"], {}, {}, ["option --memory: lab.memory: expected a size from 256M"]),
    "negative-memory": (["up", "--memory", "-1G"], {}, {}, ["option --memory: lab.memory", "got '-1G'"]),
    "huge-memory": (["up", "--memory", "64T"], {}, {}, ["option --memory: lab.memory", "this machine's", "got '64T'"]),
    "unknown-suite": (["test", "nosuch"], {}, {}, ["nosuch: not a suite (", "kvmlab test --list"]),
    "unknown-scenario": (["test", "thp", "-k", "no-such-scenario"], {}, {}, ["-k no-such-scenario: no scenario matches"]),
    "missing-scenario-file": (["test", "{tmp}/gone.yaml"], {}, {}, ["{tmp}/gone.yaml: no such scenario file"]),
    "malformed-scenario": (["test", "{tmp}/s.yaml"], {"s.yaml": "memslots: [\n"}, {},
                           ["{tmp}/s.yaml: malformed YAML at line 2"]),
    "unknown-scenario-key": (["test", "{tmp}/s.yaml"], {"s.yaml": GOOD_SCENARIO + "gust: {vcpus: 2}\n"}, {},
                             ["{tmp}/s.yaml: gust: unknown key"]),
    "scenario-wrong-type": (["test", "{tmp}/s.yaml"], {"s.yaml": GOOD_SCENARIO + "guest: {vcpus: many}\n"}, {},
                            ["{tmp}/s.yaml: guest.vcpus: expected an integer from 1 to 8, got 'many'"]),
    "scenario-zero-size": (["test", "{tmp}/s.yaml"], {"s.yaml": "memslots: [{ipa: 1G, size: 0}]\n"}, {},
                           ["{tmp}/s.yaml: memslots[0].size: expected a size from 4K to 4G"]),
    "scenario-huge-vcpus": (["test", "{tmp}/s.yaml"], {"s.yaml": GOOD_SCENARIO + "guest: {vcpus: 4096}\n"}, {},
                            ["{tmp}/s.yaml: guest.vcpus", "got 4096"]),
    "missing-kernel-file": (["up", "--kernel", "{tmp}/Image"], {}, {}, ["lab.kernel: {tmp}/Image: no such file"]),
    "kernel-in-config-missing": (["up", "-c", "{tmp}/lab.yaml"], {"lab.yaml": "lab: {kernel: build/Image}\n"}, {},
                                 ["{tmp}/lab.yaml: lab.kernel: {tmp}/build/Image: no such file"]),
    "not-an-arm64-image": (["up", "--kernel", "{tmp}/Image"], {"Image": "#!/bin/sh\necho not a kernel\n"}, {},
                           ["{tmp}/Image: not an arm64 Linux Image (no ARM\\x64 magic at offset 0x38)"]),
    "gzip-image": (["up", "--kernel", "{tmp}/Image.gz"], {"Image.gz": b"gzip"}, {},
                   ["{tmp}/Image.gz: gzip-compressed: give the uncompressed Image"]),
    "no-qemu-on-path": (["up"], {}, {"PATH": "/nonexistent"},
                        ["qemu-system-aarch64: not found (config key qemu.binary)", "scripts/setup"]),
    "qemu-binary-missing": (["up", "-c", "{tmp}/lab.yaml"], {"lab.yaml": "qemu: {binary: bin/qemu-system-aarch64}\n"},
                            {}, ["{tmp}/bin/qemu-system-aarch64: not found (config key qemu.binary)"]),
    "no-archive-reachable": (["up"], {}, {"KVMLAB_CACHE_DIR": "{tmp}-new-cache", "KVMLAB_MIRROR": "http://127.0.0.1:9/debian"},
                             ["no Debian package archive reachable for trixie (arm64)", "Could not connect to 127.0.0.1:9",
                              "KVMLAB_MIRROR"]),
    "bad-lab-name": (["up", "--name", "Bad Name!"], {}, {}, ["lab.name: expected a name of lowercase letters"]),
    "bad-qmp-arguments": (["qmp", "query-status", "{not json"], {}, {}, ["ARGUMENTS: not valid JSON"]),
}


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path below `roots` with its size and mtime (a directory's mtime changes when
    anything is created or removed in it)."""
    seen = {}
    for root in roots:
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            seen[str(path)] = (st.st_size, st.st_mtime_ns)
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path):
    args, files, env, expected = CASES[case]
    tmp = tmp_path / "case"
    work = tmp_path / "work"  # the working directory: results would land here
    for d in (tmp, work):
        d.mkdir()
    for name, text in files.items():
        path = tmp / name
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(b"not a kernel"))
        else:
            path.write_text(text.replace("{tmp}", str(tmp)))
    runtime = tmp_path / "runtime"
    env = {k: v.replace("{tmp}", str(tmp)) for k, v in env.items()}
    watched = [tmp, work, runtime, Path(env.get("KVMLAB_CACHE_DIR", cache_dir()))]
    # The user's cache is large: its top level (entries, locks, tmp) is what a build writes.
    before = snapshot(*watched[:3]) | _top(watched[3])
    result = subprocess.run([sys.executable, "-m", "lab.cli", *[a.replace("{tmp}", str(tmp)) for a in args]],
                            cwd=work, capture_output=True, timeout=300,
                            env={**os.environ, "KVMLAB_RUNTIME_DIR": str(runtime), **env})
    err = result.stderr.decode()
    assert result.returncode == 2, err
    # Progress (timestamped lines, when a step had begun) aside, one line: the error.
    lines = [line for line in err.strip().splitlines() if not re.match(r"^\[\d\d:\d\d:\d\d\] ", line)]
    assert len(lines) == 1 and lines[0].startswith("kvmlab: error: "), err
    for fragment in expected:
        assert fragment.replace("{tmp}", str(tmp)) in lines[0]
    assert result.stdout == b""
    assert snapshot(*watched[:3]) | _top(watched[3]) == before


def _top(cache: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for sub in ("", "images", "tmp", "locks"):
        path = cache / sub
        if path.exists():
            out[str(path)] = (0, path.stat().st_mtime_ns)
            if sub:
                out |= {str(p): (0, p.stat().st_mtime_ns) for p in path.iterdir()}
    return out
