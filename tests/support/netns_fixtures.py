"""Fixtures for the namespace testbed (tests/support/netns_testbed.py, docs/testing.md).

- `testbed(nodes=4, rate_mbit=200, docker=True)`: a started Testbed for the test module (one per
  set of arguments), stopped at the module's end, also after a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.netns_testbed import Testbed


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Testbed]]:
    beds: dict[tuple[int, int, bool], Testbed] = {}

    def get(nodes: int = 4, rate_mbit: int = 200, docker: bool = True) -> Testbed:
        key = (nodes, rate_mbit, docker)
        if key not in beds:
            root = tmp_path_factory.mktemp("testbed")
            beds[key] = Testbed(root, nodes, rate_mbit, docker=docker).start()
        return beds[key]

    yield get
    for bed in beds.values():
        bed.stop()
