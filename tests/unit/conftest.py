"""tests/unit: pure code, no JVM and no Ray. Asking for the session's Spark or Ray is an
error here, so a test that needs them is moved to tests/integration, not slowed down."""

import pytest


def _refuse(name: str):
    @pytest.fixture(scope="session", name=name)
    def refused():
        pytest.fail(f"tests/unit starts no JVM and no Ray: a test asking for `{name}` "
                    "belongs in tests/integration")
    return refused


spark = _refuse("spark")
ray_address = _refuse("ray_address")
