"""Issue #16 (endpoint_load benchmark target, r15-perf): an endpoint replica's onnxruntime session runs as
many intra-op threads as the CPUs its replica reserves (at least one) and never spin-waits, so on a small
host it leaves the CPU to Serve's proxy and the other replicas (benchmarks/README.md, endpoint_load)."""

from __future__ import annotations

import pytest

from ray_jobs.serving import onnx_session_options


@pytest.mark.parametrize(("cpus", "threads"), [(0, 1), (0.25, 1), (0.5, 1), (1, 1), (1.5, 2), (4, 4)])
def test_threads_follow_the_replicas_cpu_share_and_never_spin(cpus, threads):
    options = onnx_session_options(cpus)
    assert options.intra_op_num_threads == threads
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
