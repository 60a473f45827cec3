"""bench/intake.py's CPU accounting: the per-case split and the rate the cores could carry at that cost."""

from __future__ import annotations

import os
import time

from tests.process_support import bench_intake


def test_cpu_per_case_splits_serve_store_and_client() -> None:
    bench = bench_intake()
    before = {0: (False, 1.0), 101: (False, 10.0), 102: (False, 20.0), 103: (True, 5.0), 104: (False, 3.0)}
    # 104 exited during the run (a replaced worker): only processes seen at both ends are counted.
    after = {0: (False, 1.5), 101: (False, 13.0), 102: (False, 22.0), 103: (True, 6.0), 105: (False, 9.0)}
    out = bench.cpu_per_case(before, after, 1000)
    assert out["cpu_ms_per_case_serve"] == 5.0
    assert out["cpu_ms_per_case_store"] == 1.0
    assert out["cpu_ms_per_case_client"] == 0.5
    assert out["cpu_bound_cases_per_s"] == round((os.cpu_count() or 1) / 0.0065, 1)
    assert bench.cpu_per_case(before, after, 0) == {}


def test_cpu_snapshot_reads_the_process_tree() -> None:
    bench = bench_intake()
    first = bench.cpu_snapshot(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    second = bench.cpu_snapshot(os.getpid())
    assert first[os.getpid()][0] is False
    assert second[os.getpid()][1] - first[os.getpid()][1] >= 0.15
    assert second[0][1] - first[0][1] >= 0.15
