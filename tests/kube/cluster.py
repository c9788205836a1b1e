"""A real control plane for the end-to-end tests, started from kubebox on loopback.

`ControlPlane` runs etcd, kube-apiserver (client certificates from a throwaway CA, Node and
RBAC authorization, the default admission plugins plus NodeRestriction) and
kube-controller-manager; `scheduler` adds kube-scheduler with a given configuration and
`node` kubelet's device manager for one node (kubebox node). Each component logs to
`<dir>/logs/<name>.log`; a component that dies fails what waits for it with its log's tail.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from tests.kube.certs import Authority, Pair

#: Controllers the tests rely on: service accounts and their tokens' CA, namespaces, the
#: garbage collector (owner references), node lifecycle, pod garbage collection, and the
#: aggregated ClusterRoles (admin, edit, view) that tenants are given.
CONTROLLERS = ",".join(
    [
        "serviceaccount-controller",
        "serviceaccount-token-controller",
        "root-ca-certificate-publisher-controller",
        "namespace-controller",
        "garbage-collector-controller",
        "node-lifecycle-controller",
        "pod-garbage-collector-controller",
        "clusterrole-aggregation-controller",
    ]
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ComponentDied(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    #: How it was started (`ControlPlane.restart` starts it so again).
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check(self) -> None:
        if self.popen.poll() is not None:
            raise ComponentDied(
                f"{self.name} exited with {self.popen.returncode}; its log ends:\n{self.tail()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def wait_until(
    what: Callable[[], object], timeout: float, *, watch: list[Process], why: str
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for p in watch:
            p.check()
        try:
            value = what()
        except Exception:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}:\n{p.tail()}" for p in watch)
            raise TimeoutError(f"{why}: not after {timeout:.0f} s\n{tails}")
        time.sleep(0.1)


def kubeconfig(
    path: Path, server: str, ca: Path, *, pair: Pair | None = None, token: str | None = None
) -> Path:
    user: dict[str, str] = {}
    if pair is not None:
        user = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
    if token is not None:
        user = {"token": token}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class ControlPlane:
    binary: Path
    dir: Path
    processes: list[Process] = field(default_factory=list)
    server: str = ""
    ca: Authority | None = None
    admin_kubeconfig: Path | None = None
    started_s: float = 0.0

    # -- processes ------------------------------------------------------------------------
    def spawn(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> Process:
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{name}.log"
        argv = command if command is not None else [str(self.binary)]
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*argv, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        proc = Process(name, popen, log, [*argv, *args], env)
        self.processes.append(proc)
        return proc

    def restart(self, proc: Process) -> Process:
        """Stop `proc` and start it again as it was started (logging to the same file)."""
        proc.stop()
        self.processes.remove(proc)
        return self.spawn(proc.name, proc.argv[1:], env=proc.env, command=proc.argv[:1])

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        self.processes.clear()

    # -- the control plane -----------------------------------------------------------------
    def start(self) -> None:
        began = time.monotonic()
        self.ca = ca = Authority(self.dir / "pki")
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd = self.spawn(
            "etcd",
            [
                "etcd",
                "--data-dir",
                str(self.dir / "etcd"),
                "--client-url",
                f"http://127.0.0.1:{etcd_port}",
                "--peer-url",
                f"http://127.0.0.1:{peer_port}",
            ],
        )
        serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            hosts=(
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "10.0.0.1",
            ),
        )
        sa = ca.signing_key("service-accounts")
        admin = ca.issue("admin", "admin", ("system:masters",))
        self.server = f"https://127.0.0.1:{api_port}"
        self.admin_kubeconfig = kubeconfig(
            self.dir / "admin.kubeconfig", self.server, ca.ca.cert, pair=admin
        )
        wait_until(lambda: _tcp_open(etcd_port), 60, watch=[etcd], why="etcd")
        apiserver = self.spawn(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={ca.ca.cert}",
                # (Aggregation is not used; set so that components find the bundle they look for.)
                f"--requestheader-client-ca-file={ca.ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--allow-privileged=true",
                # The advertised address is loopback: no endpoints for the kubernetes Service.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.dir / 'apiserver'}",
                "--v=1",
            ],
        )
        wait_until(
            lambda: self.get("/readyz") == "ok",
            90,
            watch=[etcd, apiserver],
            why="kube-apiserver /readyz",
        )
        kcm_cert = ca.issue("controller-manager", "system:kube-controller-manager")
        kcm_config = kubeconfig(self.dir / "kcm.kubeconfig", self.server, ca.ca.cert, pair=kcm_cert)
        self.spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                f"--service-account-private-key-file={sa.key}",
                f"--root-ca-file={ca.ca.cert}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--controllers={CONTROLLERS}",
                "--v=1",
            ],
        )
        # The default service account exists once the controller manager runs: pods can be made.
        core = client.CoreV1Api(self.api())
        wait_until(
            lambda: core.read_namespaced_service_account("default", "default"),
            60,
            watch=self.processes,
            why="the default service account",
        )
        self.started_s = time.monotonic() - began

    def get(self, path: str) -> str:
        assert self.ca is not None
        ctx = ssl.create_default_context(cafile=str(self.ca.ca.cert))
        admin = Pair(self.ca.dir / "admin.crt", self.ca.dir / "admin.key")
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        with urllib.request.urlopen(self.server + path, context=ctx, timeout=5) as r:
            return str(r.read().decode())

    def api(self, config_file: Path | None = None) -> client.ApiClient:
        """The official client for a kubeconfig this control plane wrote (admin's by default)."""
        doc = yaml.safe_load((config_file or self.admin_kubeconfig or Path()).read_text())
        cluster, user = doc["clusters"][0]["cluster"], doc["users"][0]["user"]
        configuration = client.Configuration()
        configuration.host = cluster["server"]
        configuration.ssl_ca_cert = cluster["certificate-authority"]
        if "token" in user:
            configuration.api_key = {"authorization": f"Bearer {user['token']}"}
        else:
            configuration.cert_file = user["client-certificate"]
            configuration.key_file = user["client-key"]
        return client.ApiClient(configuration)

    # -- identities and manifests ----------------------------------------------------------
    def client_identity(self, name: str, common_name: str, *groups: str) -> Path:
        assert self.ca is not None
        pair = self.ca.issue(name, common_name, groups)
        return kubeconfig(self.dir / f"{name}.kubeconfig", self.server, self.ca.ca.cert, pair=pair)

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, pod: tuple[str, str] | None = None
    ) -> Path:
        """A kubeconfig with a token of service account `namespace/name` (TokenRequest, 1 h).
        With `pod` (name, uid) the token is bound to that pod of `namespace`, as kubelet's
        projected tokens are: it names the pod's node, and dies with the pod."""
        assert self.ca is not None
        core = client.CoreV1Api(self.api())
        bound = None
        if pod is not None:
            bound = client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=pod[0], uid=pod[1]
            )
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=["https://kubernetes.default.svc"],
                expiration_seconds=3600,
                bound_object_ref=bound,
            )
        )
        answer: Any = core.create_namespaced_service_account_token(name, namespace, request)
        suffix = f"-{pod[0]}" if pod is not None else ""
        return kubeconfig(
            self.dir / f"sa-{namespace}-{name}{suffix}.kubeconfig",
            self.server,
            self.ca.ca.cert,
            token=answer.status.token,
        )

    def apply(self, *documents: dict[str, Any]) -> None:
        """Create each object (cluster-scoped or in its namespace) through discovery."""
        dynamic: Any = DynamicClient(self.api())  # type: ignore[no-untyped-call]
        for doc in documents:
            resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            namespace = doc.get("metadata", {}).get("namespace") if resource.namespaced else None
            resource.create(body=doc, namespace=namespace)

    # -- kube-scheduler and nodes ----------------------------------------------------------
    def scheduler(self, config: dict[str, Any], kubeconfig_file: Path) -> Process:
        config = json.loads(json.dumps(config))
        config.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig_file)
        path = self.dir / "kube-scheduler-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return self.spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                f"--config={path}",
                f"--authentication-kubeconfig={kubeconfig_file}",
                f"--authorization-kubeconfig={kubeconfig_file}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--v=2",
            ],
        )

    def node(
        self,
        name: str,
        plugin_dir: Path,
        pod_resources_socket: Path,
        report_dir: Path,
        *,
        numa_nodes: int = 2,
        policy: str = "none",
    ) -> Process:
        identity = self.client_identity(f"node-{name}", f"system:node:{name}", "system:nodes")
        plugin_dir.mkdir(parents=True, exist_ok=True)
        return self.spawn(
            f"node-{name}",
            [
                "node",
                f"--kubeconfig={identity}",
                f"--node-name={name}",
                f"--plugin-dir={plugin_dir}",
                f"--pod-resources-socket={pod_resources_socket}",
                f"--report-dir={report_dir}",
                f"--numa-nodes={numa_nodes}",
                f"--topology-manager-policy={policy}",
                "--v=2",
            ],
        )


def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def documents(path: Path, *, skip_kinds: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The objects of a manifest file, but those of `skip_kinds`."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] not in skip_kinds]
