"""deploy/ as a cluster admin gets it: each layout rendered by kustomize (kubectl's own
library, in kubebox: `kubectl apply -k` renders the same), and the Helm chart rendered by
Helm's engine. The manifests' and the chart's tests read them from here."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube.build import BuildError, build

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "gpulet"
#: The layouts and the kustomization of each: the extender beside kube-scheduler in the
#: gpulet-scheduler pods (the default), or behind an HTTPS Service for the cluster's own.
LAYOUTS = {"sidecar": DEPLOY, "service": DEPLOY / "extender-service"}

Doc = dict[str, Any]


def documents(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def key(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


@functools.cache
def _kustomized(layout: str) -> str:
    try:
        kubebox = build()
    except BuildError as e:
        pytest.fail(f"kubebox (for kustomize): {e}")
    out = subprocess.run(
        [str(kubebox), "kustomize", str(LAYOUTS[layout])],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if out.returncode:
        raise RuntimeError(f"kustomize {LAYOUTS[layout]}: {out.stderr}")
    return out.stdout


def kustomize(layout: str = "sidecar") -> list[Doc]:
    """What `kubectl apply -k` applies for `layout` (a fresh copy each call)."""
    return [d for d in yaml.safe_load_all(_kustomized(layout)) if d]


HELM = shutil.which("helm")
try:
    import helm_python  # Helm's own Go engine as a library (the helm-python-sdk wheel)
except ImportError:  # pragma: no cover - a platform the wheel is not built for
    helm_python = None  # type: ignore[assignment]
needs_helm = pytest.mark.skipif(
    HELM is None and helm_python is None, reason="neither helm nor helm-python-sdk is installed"
)


def render(*sets: str, namespace: str = "kube-system") -> list[Doc]:
    """`helm template gpulet deploy/helm/gpulet --namespace kube-system --set ...` (or another
    namespace): with the helm command where there is one, else with Helm's engine from
    helm-python-sdk (what the test install brings), checking the values against the chart's
    schema as helm does."""
    if HELM is not None:
        command = [HELM, "template", "gpulet", str(CHART), "--namespace", namespace]
        for s in sets:
            command += ["--set", s]
        out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if out.returncode:
            raise RuntimeError(out.stderr)
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    assert helm_python is not None
    chart = helm_python.Chart.load(CHART)
    values = helm_python.parse_set_string(",".join(sets)) if sets else {}
    chart.validate_schema(chart.merge_values(values))
    rendered = chart.render(values, name="gpulet", namespace=namespace, is_install=True)
    texts = [text for path, text in sorted(rendered.items()) if path.endswith(".yaml")]
    return [d for text in texts for d in yaml.safe_load_all(text) if d]


def normalised(doc: Doc) -> Doc:
    """What must be equal between the chart and kustomize's objects: everything but the
    labels and annotations Helm adds and the image pull policy."""
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("labels", None)
    doc["metadata"].pop("annotations", None)
    template = doc.get("spec", {}).get("template")
    if template:
        template["metadata"].pop("annotations", None)
        for container in template["spec"]["containers"]:
            container.pop("imagePullPolicy", None)
    if doc["kind"] == "ConfigMap":
        doc["data"] = {k: yaml.safe_load(v) for k, v in doc["data"].items()}
    return doc


# --- the node agent's pod, in whichever objects ---------------------------------------------


def agent_pod(docs: list[Doc]) -> Doc:
    spec: Doc = one(docs, "DaemonSet", "gpulet-agent")["spec"]["template"]["spec"]
    return spec


def agent_container(docs: list[Doc]) -> Doc:
    containers: list[Doc] = agent_pod(docs)["containers"]
    (container,) = containers
    return container


def flags(args: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` arguments, by name."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
            found[name] = value
    return found


def agent_flags(docs: list[Doc]) -> dict[str, str]:
    container = agent_container(docs)
    assert container["args"][:2] == ["agent", "run"]
    return flags(container["args"])
