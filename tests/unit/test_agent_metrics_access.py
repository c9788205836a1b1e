"""Who may read the agent's /metrics and /allocations: attacks on the real MetricsServer over
real HTTP, its access checked by the API server stand-in (TokenReview, SubjectAccessReview)
through the real kubernetes client."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kubernetes.client import ApiClient, ApiException, Configuration
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.access import KubernetesAccess
from agent.metrics import MetricsServer
from agent.node_agent import Monitoring, metrics_access
from agent.usage import FileUsageSource
from gpulet.cli import main as cli
from gpulet.kube.calls import CoreCalls, ReviewCalls
from gpulet.standins.apiserver import ApiServerStandIn

PROMETHEUS = "system:serviceaccount:monitoring:prometheus"
PROM_TOKEN = "prom-token-5f1c0e"
NOBODY_TOKEN = "alice-token-9a2b7d"
FORGED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.forged.signature"
DOC = {"version": 1, "node": "gpu-a", "gpus": [], "nics": []}
SECRET_SERIES = "gpulet_test_pod_uid_of_every_tenant"
PROTECTED = ("/metrics", "/allocations", "/nowhere", "/")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Secret(Collector):
    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(SECRET_SERIES, "what only the allowed may see")
        gauge.add_metric([], 1)
        yield gauge


class Recording(ReviewCalls):
    """The real calls, each spec asked about kept."""

    def __init__(self, api: ApiClient) -> None:
        super().__init__(api)
        self.specs: list[Mapping[str, Any]] = []

    def review_access(self, spec: Mapping[str, Any], *, timeout_s: float) -> dict[str, Any]:
        self.specs.append(spec)
        return super().review_access(spec, timeout_s=timeout_s)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def api() -> Iterator[ApiServerStandIn]:
    with ApiServerStandIn() as server:
        server.add_token(PROM_TOKEN, PROMETHEUS, uid="u-1", groups=["system:serviceaccounts"])
        server.add_token(NOBODY_TOKEN, "alice", extra={"scopes": ["read"]})
        server.allow(PROMETHEUS, "/metrics")
        server.allow(PROMETHEUS, "/allocations")
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reviews(api: ApiServerStandIn) -> Recording:
    return Recording(ApiClient(api.configuration()))


@pytest.fixture
def access(reviews: Recording, clock: Clock) -> KubernetesAccess:
    return KubernetesAccess(reviews, clock=clock)


@pytest.fixture
def port(access: KubernetesAccess) -> Iterator[int]:
    yield from serve(access)


def serve(access: KubernetesAccess | None) -> Iterator[int]:
    server = MetricsServer(
        Secret(), 0, host="127.0.0.1", documents={"/allocations": lambda: DOC}, access=access
    )
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def get(port: int, path: str, token: str | None = None, *, scheme: str = "Bearer") -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    reply = Reply(resp.status, dict(resp.getheaders()), resp.read())
    conn.close()
    return reply


def reviews_made(api: ApiServerStandIn, kind: str) -> int:
    return sum(1 for method, path in api.requests if method == "POST" and path.endswith(kind))


def assert_refused(reply: Reply, status: int) -> None:
    assert reply.status == status
    assert SECRET_SERIES.encode() not in reply.body
    assert b"gpu-a" not in reply.body
    assert b"not found" not in reply.body


# ---- the attacks ----


def test_without_a_token_nothing_is_served_and_nothing_is_asked(
    api: ApiServerStandIn, port: int
) -> None:
    for path in PROTECTED:
        reply = get(port, path)
        assert_refused(reply, 401)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert reviews_made(api, "tokenreviews") == 0


def test_anything_but_one_bearer_token_is_401(port: int) -> None:
    for scheme, token in [
        ("Basic", "cHJvbTpwYXNz"),
        ("Bearer", ""),
        ("Bearer", f"{PROM_TOKEN} extra"),
        ("", PROM_TOKEN),
        ("Token", PROM_TOKEN),
    ]:
        assert_refused(get(port, "/metrics", token, scheme=scheme), 401)


def test_a_forged_token_is_401(port: int) -> None:
    for path in PROTECTED:
        reply = get(port, path, FORGED_TOKEN)
        assert_refused(reply, 401)
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_user_without_the_permission_is_403(port: int) -> None:
    for path in PROTECTED:
        assert_refused(get(port, path, NOBODY_TOKEN), 403)


def test_an_unknown_path_is_403_even_for_an_allowed_user(port: int) -> None:
    """Unless the user may GET it, it learns nothing about it, not even that it is not there."""
    assert_refused(get(port, "/nowhere", PROM_TOKEN), 403)


def test_an_allowed_user_reads_metrics_and_allocations(port: int) -> None:
    metrics = get(port, "/metrics", PROM_TOKEN)
    assert metrics.status == 200 and SECRET_SERIES.encode() in metrics.body
    allocations = get(port, "/allocations?x=1", PROM_TOKEN, scheme="bEaReR")
    assert allocations.status == 200 and json.loads(allocations.body) == DOC


def test_the_review_asks_about_the_reviewed_user_and_the_path(
    api: ApiServerStandIn, reviews: Recording, port: int
) -> None:
    """Groups count (a grant to a group), and the SubjectAccessReview carries what the
    TokenReview said: username, uid, groups, extra."""
    api.add_token("member-token", "bob", uid="u-2", groups=["gpu-readers"], extra={"k": ["v"]})
    api.allow("gpu-readers", "/metrics")
    assert get(port, "/metrics", "member-token").status == 200
    assert reviews.specs[-1] == {
        "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
        "user": "bob",
        "uid": "u-2",
        "groups": ["gpu-readers", "system:authenticated"],
        "extra": {"k": ["v"]},
    }


def test_healthz_is_open(api: ApiServerStandIn, port: int) -> None:
    assert get(port, "/healthz").status == 200
    assert get(port, "/healthz", FORGED_TOKEN).status == 200
    assert reviews_made(api, "tokenreviews") == 0


@pytest.mark.parametrize("kind", ["tokenreviews", "subjectaccessreviews"])
def test_an_api_server_that_fails_denies_with_503_and_is_not_cached(
    api: ApiServerStandIn, port: int, clock: Clock, kind: str
) -> None:
    """403: the agent's ServiceAccount lacks system:auth-delegator."""
    for code in (500, 503, 403, 429):
        clock.now += 61  # what was allowed before is asked about again
        api.fail_next("POST", kind, code, times=2)
        assert_refused(get(port, "/metrics", PROM_TOKEN), 503)
        assert_refused(get(port, "/metrics", PROM_TOKEN), 503)
        assert get(port, "/metrics", PROM_TOKEN).status == 200  # back: asked again at once
        assert get(port, "/allocations", PROM_TOKEN).status == 200


def test_an_unreachable_api_server_denies_with_503(clock: Clock) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    closed = listener.getsockname()[1]
    listener.close()
    reviews = ReviewCalls(ApiClient(Configuration(host=f"http://127.0.0.1:{closed}")))
    for port in serve(KubernetesAccess(reviews, clock=clock)):
        assert_refused(get(port, "/metrics", PROM_TOKEN), 503)


def test_an_api_server_that_does_not_answer_denies_with_503_in_time(clock: Clock) -> None:
    with socket.socket() as listener:  # accepts (the kernel's backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        host = f"http://127.0.0.1:{listener.getsockname()[1]}"
        reviews = ReviewCalls(ApiClient(Configuration(host=host)))
        for port in serve(KubernetesAccess(reviews, timeout_s=0.5, clock=clock)):
            started = time.monotonic()
            assert_refused(get(port, "/metrics", PROM_TOKEN), 503)
            assert time.monotonic() - started < 5


def test_a_flood_with_one_token_is_a_handful_of_reviews(api: ApiServerStandIn, port: int) -> None:
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: get(port, "/metrics", PROM_TOKEN), range(500)))
    assert all(r.status == 200 for r in replies)
    assert reviews_made(api, "tokenreviews") <= 2
    assert reviews_made(api, "subjectaccessreviews") <= 2


def test_a_flood_of_forged_or_forbidden_requests_is_a_handful_of_reviews(
    api: ApiServerStandIn, port: int
) -> None:
    with ThreadPoolExecutor(16) as pool:
        forged = list(pool.map(lambda _: get(port, "/metrics", FORGED_TOKEN), range(250)))
        denied = list(pool.map(lambda _: get(port, "/metrics", NOBODY_TOKEN), range(250)))
    assert {r.status for r in forged} == {401} and {r.status for r in denied} == {403}
    assert reviews_made(api, "tokenreviews") <= 4
    assert reviews_made(api, "subjectaccessreviews") <= 2


def test_answers_expire_sooner_when_they_deny(
    api: ApiServerStandIn, port: int, clock: Clock
) -> None:
    def asked() -> tuple[int, int]:
        return reviews_made(api, "tokenreviews"), reviews_made(api, "subjectaccessreviews")

    get(port, "/metrics", PROM_TOKEN)
    get(port, "/metrics", FORGED_TOKEN)
    get(port, "/metrics", NOBODY_TOKEN)
    assert asked() == (3, 2)
    clock.now += 9
    for token in (PROM_TOKEN, FORGED_TOKEN, NOBODY_TOKEN):
        get(port, "/metrics", token)
    assert asked() == (3, 2)
    clock.now += 2  # 11 s: the forged token and alice's denial are asked about again
    assert get(port, "/metrics", FORGED_TOKEN).status == 401
    assert get(port, "/metrics", NOBODY_TOKEN).status == 403
    assert asked() == (4, 3)
    assert get(port, "/metrics", PROM_TOKEN).status == 200
    assert asked() == (4, 3)
    clock.now += 50  # 61 s: prometheus's too
    assert get(port, "/metrics", PROM_TOKEN).status == 200
    assert asked() == (5, 4)


def test_a_permission_granted_later_counts_once_the_denial_expired(
    api: ApiServerStandIn, port: int, clock: Clock
) -> None:
    assert get(port, "/allocations", NOBODY_TOKEN).status == 403
    api.allow("alice", "/allocations")
    clock.now += 11
    assert get(port, "/allocations", NOBODY_TOKEN).status == 200


def test_the_caches_are_bounded(api: ApiServerStandIn, reviews: Recording, clock: Clock) -> None:
    access = KubernetesAccess(reviews, cache_size=4, clock=clock)
    for i in range(10):
        api.add_token(f"t{i}", f"user{i}")
        access.check(f"Bearer t{i}", "/metrics")
        access.check(f"Bearer forged{i}", "/metrics")
    assert len(access.users) == 4 and len(access.grants) == 4


def test_the_cache_keeps_no_raw_token(port: int, access: KubernetesAccess) -> None:
    for token in (PROM_TOKEN, NOBODY_TOKEN, FORGED_TOKEN):
        get(port, "/metrics", token)
    kept = strings(vars(access.users)) + strings(vars(access.grants))
    assert kept, "nothing cached"
    for token in (PROM_TOKEN, NOBODY_TOKEN, FORGED_TOKEN):
        assert not [s for s in kept if token in s]
        assert hashlib.sha256(token.encode()).hexdigest() in kept


def strings(obj: object, seen: set[int] | None = None) -> list[str]:
    """Every string reachable from `obj` through containers and objects' attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, str | bytes):
        return [obj if isinstance(obj, str) else obj.decode(errors="replace")]
    if isinstance(obj, Mapping):
        return [s for k, v in obj.items() for s in strings(k, seen) + strings(v, seen)]
    if isinstance(obj, list | tuple | set | frozenset):
        return [s for item in obj for s in strings(item, seen)]
    if hasattr(obj, "__dict__") and not callable(obj):
        return strings(vars(obj), seen)
    return []


def test_denials_are_counted_in_the_metrics(port: int) -> None:
    get(port, "/metrics")
    get(port, "/metrics", FORGED_TOKEN)
    get(port, "/metrics", NOBODY_TOKEN)
    get(port, "/metrics", NOBODY_TOKEN)
    text = get(port, "/metrics", PROM_TOKEN).body.decode()
    assert 'gpulet_agent_http_denied_total{reason="no-token"} 1.0' in text
    assert 'gpulet_agent_http_denied_total{reason="invalid-token"} 1.0' in text
    assert 'gpulet_agent_http_denied_total{reason="forbidden"} 2.0' in text


def test_without_an_access_check_everything_is_open() -> None:
    for port in serve(None):
        assert get(port, "/metrics").status == 200
        assert get(port, "/nowhere").status == 404


def test_the_agent_checks_through_its_api_connection_unless_told_not_to(
    api: ApiServerStandIn,
) -> None:
    assert Monitoring(FileUsageSource(Path("usage.json")), Path("/proc")).metrics_auth == (
        "kubernetes"
    )
    core = CoreCalls(ApiClient(api.configuration()))
    checker = metrics_access("kubernetes", core)
    assert isinstance(checker, KubernetesAccess)
    assert checker.check(f"Bearer {PROM_TOKEN}", "/metrics").status == 200
    assert checker.check(f"Bearer {NOBODY_TOKEN}", "/metrics").status == 403
    assert metrics_access("none", core) is None
    with pytest.raises(ValueError, match="kubernetes or none"):
        metrics_access("open", core)


# ---- `gpulet node allocations` ----


def test_node_allocations_sends_a_token(
    port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = f"http://127.0.0.1:{port}"
    monkeypatch.delenv("GPULET_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(PROM_TOKEN + "\n")
    run = CliRunner().invoke
    result = run(
        cli, ["node", "allocations", "--agent", agent, "--json", "--token-file", str(token_file)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == DOC
    result = run(
        cli, ["node", "allocations", "--agent", agent, "--json"], env={"GPULET_TOKEN": PROM_TOKEN}
    )
    assert result.exit_code == 0, result.output

    result = run(cli, ["node", "allocations", "--agent", agent])
    assert result.exit_code == 1 and "HTTP 401" in result.output and "--token-file" in result.output
    token_file.write_text(NOBODY_TOKEN)
    result = run(cli, ["node", "allocations", "--agent", agent, "--token-file", str(token_file)])
    assert result.exit_code == 1 and "HTTP 403" in result.output
    assert NOBODY_TOKEN not in result.output
    token_file.write_text("two\nlines")
    result = run(cli, ["node", "allocations", "--agent", agent, "--token-file", str(token_file)])
    assert result.exit_code == 1 and "whitespace" in result.output


# ---- the stand-in speaks the review protocol ----


def test_the_standin_answers_reviews_as_the_api_server_does(api: ApiServerStandIn) -> None:
    calls = ReviewCalls(ApiClient(api.configuration()))
    known = calls.review_token(PROM_TOKEN, timeout_s=5)
    assert (known["kind"], known["apiVersion"]) == ("TokenReview", "authentication.k8s.io/v1")
    assert known["status"] == {
        "authenticated": True,
        "user": {
            "username": PROMETHEUS,
            "uid": "u-1",
            "groups": ["system:serviceaccounts", "system:authenticated"],
        },
    }
    assert calls.review_token(FORGED_TOKEN, timeout_s=5)["status"] == {"user": {}}
    allowed = calls.review_access(
        {"user": PROMETHEUS, "nonResourceAttributes": {"path": "/metrics", "verb": "get"}},
        timeout_s=5,
    )
    assert allowed["kind"] == "SubjectAccessReview" and allowed["status"]["allowed"] is True
    denied = calls.review_access(
        {"user": PROMETHEUS, "nonResourceAttributes": {"path": "/metrics", "verb": "delete"}},
        timeout_s=5,
    )
    assert denied["status"] == {"allowed": False}
    api.allow("ops", "/debug/*", "*")
    wild = {"groups": ["ops"], "nonResourceAttributes": {"path": "/debug/x", "verb": "put"}}
    assert calls.review_access(wild, timeout_s=5)["status"]["allowed"] is True

    with pytest.raises(ApiException) as empty:
        calls.review_token("", timeout_s=5)
    assert empty.value.status == 400
    with pytest.raises(ApiException) as nobody:
        calls.review_access({"nonResourceAttributes": {"path": "/", "verb": "get"}}, timeout_s=5)
    assert nobody.value.status == 422
    assert "at least one of user or group" in json.loads(nobody.value.body or "{}")["message"]
