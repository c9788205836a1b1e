"""ApiServerStandIn: the in-process API server, its direct store access, and its controls."""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType

import kubernetes.client
import yaml

from gpulet.standins.apiserver.crds import CRD_KIND, CrdController
from gpulet.standins.apiserver.gc import Collector
from gpulet.standins.apiserver.journal import Journal
from gpulet.standins.apiserver.kinds import CORE_KINDS, Kinds
from gpulet.standins.apiserver.leases import LEASE_KIND
from gpulet.standins.apiserver.resources import EVENTS, NODES, PODS, JsonObject, Resource, key_of
from gpulet.standins.apiserver.rest import RestApi, object_key, served
from gpulet.standins.apiserver.reviews import Reviews
from gpulet.standins.apiserver.routes import COLLECTION, OBJECT, Target, not_served
from gpulet.standins.apiserver.server import ApiHttpServer
from gpulet.standins.apiserver.store import Store
from gpulet.standins.apiserver.traffic import Traffic


class ApiServerStandIn:
    """A Kubernetes API server for nodes, pods, bindings, events, Leases,
    CustomResourceDefinitions and their custom resources (with garbage collection of
    dependents), and the TokenReviews and SubjectAccessReviews of the tokens and grants
    given it (add_token, allow), on 127.0.0.1 at a free port, serving from a daemon thread
    from construction until stop(). docs/e2e.md lists where it differs from the real one."""

    def __init__(self, *, history_size: int = 10_000) -> None:
        """history_size: how many writes back a watch can resume from (older: 410)."""
        self._store = Store(history_size)
        self._kinds = Kinds([*CORE_KINDS, LEASE_KIND, CRD_KIND])
        self._store.observe(CrdController(self._store, self._kinds).observe)
        self._store.observe(Collector(self._store, self._kinds).observe)
        self._bindings: Journal[JsonObject] = Journal()
        self._rest = RestApi(self._store, self._kinds, self._bindings.append)
        self._reviews = Reviews(self._rest)
        self._server = ApiHttpServer(("127.0.0.1", 0), self._reviews, self._store)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"apiserver-standin {self.url}",
            daemon=True,
        )
        self._stopped = threading.Event()
        self._thread.start()

    def __enter__(self) -> ApiServerStandIn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """End every watch, close every connection, stop serving. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._store.close()
        # Closed, the store ends every watch; each stream then writes its last chunk. Shutting
        # the connections before that would break streams that were ending cleanly.
        self._server.drain_streams(timeout=2.0)
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join()

    # ---- clients ----

    def configuration(self) -> kubernetes.client.Configuration:
        """A client configuration for this server (no authentication)."""
        return kubernetes.client.Configuration(host=self.url)

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> None:
        """A kubeconfig whose current context is this server, with no authentication."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {}}],
            "contexts": [
                {
                    "name": "standin",
                    "context": {"cluster": "standin", "user": "standin", "namespace": "default"},
                }
            ],
            "current-context": "standin",
        }
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f)

    # ---- the store, directly (no HTTP); writes reach watchers as any other ----
    # The create_* helpers drop a resourceVersion the object carries (a create over HTTP
    # with one fails, as on the real server), so that an object as a client or
    # kube-scheduler holds it (pod_object) can be stored as it is.

    def create_node(self, obj: JsonObject) -> JsonObject:
        return self._store.create(NODES, _unversioned(obj))

    def create_pod(self, obj: JsonObject) -> JsonObject:
        """The namespace is metadata.namespace, else "default"."""
        return self._store.create(PODS, _unversioned(obj))

    def get_node(self, name: str) -> JsonObject | None:
        return self._store.find(NODES, "", name)

    def get_pod(self, namespace: str, name: str) -> JsonObject | None:
        return self._store.find(PODS, namespace, name)

    def nodes(self) -> list[JsonObject]:
        return self._store.list_objects(NODES)[0]

    def events(self) -> list[JsonObject]:
        return self._store.list_objects(EVENTS)[0]

    def pods(self) -> list[JsonObject]:
        """Pods of every namespace."""
        return self._store.list_objects(PODS)[0]

    def update_node(self, obj: JsonObject) -> JsonObject:
        """Replace the node, whatever resourceVersion obj carries (MODIFIED)."""
        return self._replace(NODES, obj)

    def update_pod(self, obj: JsonObject) -> JsonObject:
        """Replace the pod, whatever resourceVersion obj carries (MODIFIED)."""
        return self._replace(PODS, obj)

    def delete_node(self, name: str) -> None:
        """Delete the node (marked only while it has finalizers)."""
        self._store.delete(NODES, "", name)

    def delete_pod(
        self, namespace: str, name: str, *, grace_period_seconds: int | None = None
    ) -> JsonObject:
        """DELETE the pod as a client does: a pod bound to a node, not finished, is only
        marked (deletionTimestamp) until finish_pod_deletion; one on no node, or finished,
        goes at once (unless finalizers hold it). Its state after."""
        deleted = self._store.delete(
            PODS, namespace, name, grace_period_seconds=grace_period_seconds
        )
        assert deleted is not None  # no uid given: NotFound raised instead
        return deleted[0]

    def finish_pod_deletion(self, namespace: str, name: str) -> None:
        """What the pod's kubelet does once its containers stopped, there being no kubelet
        here: DELETE it with grace 0, on condition of its uid. The pod goes (unless
        finalizers hold it)."""
        pod = self._store.get(PODS, namespace, name)
        self._rest.delete(
            self._target("v1", "pods", _named(name, namespace)),
            grace_period_seconds=0,
            uid=pod["metadata"]["uid"],
        )

    def create_crd(self, obj: JsonObject) -> JsonObject:
        """Create a CustomResourceDefinition (checked, given its status, Established at
        once): its custom resources are served from now on."""
        return self._rest.create(Target(CRD_KIND, COLLECTION, None, None), obj)

    def create_object(self, api_version: str, plural: str, obj: JsonObject) -> JsonObject:
        """Create an object of any served kind (`coordination.k8s.io/v1`, `leases`; a
        custom resource's group/version and plural), admitted as over HTTP
        (validated and pruned: ApiError 422). A namespaced object's namespace is
        metadata.namespace, else "default"; apiVersion and kind default to the path's."""
        target = self._target(api_version, plural, obj)
        obj = {"apiVersion": target.kind.api_version, "kind": target.kind.resource.kind, **obj}
        return self._rest.create(target, _unversioned(obj))

    def get_object(
        self, api_version: str, plural: str, name: str, namespace: str = ""
    ) -> JsonObject | None:
        target = self._target(api_version, plural, _named(name, namespace))
        found = self._store.find(*object_key(target))
        return None if found is None else served(target.kind, found)

    def objects(self, api_version: str, plural: str) -> list[JsonObject]:
        """Every object of the kind, of every namespace."""
        kind = self._target(api_version, plural, {}).kind
        items = self._store.list_objects(kind.resource)[0]
        return [served(kind, item) for item in items]

    def update_object(self, api_version: str, plural: str, obj: JsonObject) -> JsonObject:
        """Replace the object, whatever resourceVersion obj carries (MODIFIED), admitted as
        over HTTP."""
        target = self._target(api_version, plural, obj)
        replacement = _unversioned(obj)
        return self._rest.update(target, lambda _: replacement)

    def delete_object(self, api_version: str, plural: str, name: str, namespace: str = "") -> None:
        """Delete the object; its dependents go with it (garbage collection)."""
        self._rest.delete(self._target(api_version, plural, _named(name, namespace)))

    def _target(self, api_version: str, plural: str, obj: JsonObject) -> Target:
        group, _, version = api_version.rpartition("/")
        kind = self._kinds.find(group, version, plural)
        if kind is None:
            raise not_served()
        namespace, name = key_of(copy.deepcopy(obj))
        if kind.resource.namespaced:
            return Target(kind, OBJECT if name else COLLECTION, namespace or "default", name)
        return Target(kind, OBJECT if name else COLLECTION, None, name)

    def _replace(self, resource: Resource, obj: JsonObject) -> JsonObject:
        replacement = _unversioned(obj)
        namespace, name = key_of(replacement)
        if resource.namespaced and not namespace:
            namespace = "default"
        return self._store.update(resource, namespace, name, lambda _: replacement)

    # ---- who is who, and who may read what (TokenReview, SubjectAccessReview) ----

    def add_token(
        self,
        token: str,
        username: str,
        *,
        uid: str = "",
        groups: Sequence[str] = (),
        extra: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """A TokenReview of `token` answers this user (in `groups` and
        system:authenticated); of any other token, not authenticated."""
        self._reviews.add_token(token, username, uid=uid, groups=groups, extra=extra)

    def allow(self, subject: str, path: str, verb: str = "get") -> None:
        """A SubjectAccessReview allows `subject` (a user name or a group) to `verb` the
        non-resource URL `path` (RBAC's `nonResourceURLs`: a trailing `*` matches any rest);
        nothing else is allowed."""
        self._reviews.allow(subject, path, verb)

    # ---- what the server saw, and faults ----

    @property
    def bindings(self) -> list[JsonObject]:
        """Every Binding body that reached a binding endpoint, accepted or not, in order."""
        return self._bindings.items()

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path with query) of every HTTP request, in order."""
        return [(e.method, e.path) for e in self._server.traffic.entries()]

    def traffic(self) -> list[Traffic]:
        """Every HTTP request so far, in order, with its bytes each way and its User-Agent
        (a watch still open: the bytes it has streamed so far)."""
        return self._server.traffic.snapshot()

    def fail_next(self, method: str, path_regex: str, code: int, times: int = 1) -> None:
        """Answer the next `times` requests of `method` whose path with query matches
        `path_regex` (re.search) with a Status error of HTTP `code`, doing nothing else."""
        self._server.faults.add(method, path_regex, code, times)

    def drop_watches(self) -> None:
        """End every open watch stream cleanly, as an API server's watch timeout does."""
        self._store.drop_watches()


def _named(name: str, namespace: str) -> JsonObject:
    return {"metadata": {"name": name, "namespace": namespace}}


def _unversioned(obj: JsonObject) -> JsonObject:
    """A copy of obj without metadata.resourceVersion."""
    copied = copy.deepcopy(obj)
    copied.get("metadata", {}).pop("resourceVersion", None)
    return copied
