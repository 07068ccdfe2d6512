"""The in-process executors run the conformance suite (flowdeco.testing.ExecutorConformance).

``process`` runs it in tests/test_process_executor.py, Dask in plugins/flowdeco-dask.
"""

from __future__ import annotations

import pytest

from flowdeco.testing import ExecutorConformance


class TestThread(ExecutorConformance):
    @pytest.fixture
    def executor(self):
        return "thread"


class TestSync(ExecutorConformance):
    @pytest.fixture
    def executor(self):
        return "sync"
