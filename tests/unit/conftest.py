"""Fixtures shared by the API stand-in's tests: the stand-in, and the official client on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient, CoreV1Api

from gpulet.standins.apiserver import ApiServerStandIn


@pytest.fixture
def api() -> Iterator[ApiServerStandIn]:
    with ApiServerStandIn() as server:
        yield server


@pytest.fixture
def v1(api: ApiServerStandIn) -> Iterator[CoreV1Api]:
    with ApiClient(api.configuration()) as client:
        yield CoreV1Api(client)
