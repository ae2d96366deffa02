"""No unbounded memory: a long-ish stream of garbage (mutated captures, random bytes, valid
requests from ever new MACs and addresses) into the DHCP protocol (with the real core) and the
TFTP server (with its real transfer sessions), each in a fresh process under tracemalloc
(memory_probe.py). After a warm-up that fills every bounded table, the memory still held at the
end is no more than at the half-way mark, give or take noise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fuzz.conftest import EXAMPLES, HERE

NOISE = 128 * 1024  # bytes; a leak of a few bytes a packet over the second half would exceed it
PEAK = 16 * 1024 * 1024


@pytest.mark.parametrize(("target", "packets"), [("dhcp", 30_000), ("tftp", 8_000)])
def test_memory_is_bounded(target, packets):
    packets = max(packets, EXAMPLES)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.memory_probe", target, str(packets)],
        capture_output=True, text=True, timeout=1800, cwd=HERE.parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["end"] - result["half"] < NOISE, result
    assert result["peak"] < PEAK, result
    assert result.get("sessions", 0) == 0, result
