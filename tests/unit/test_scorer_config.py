"""Where the extender looks for the agents' heartbeat Leases: `leaseNamespace` in its
settings, `--lease-namespace` on the command line, else its own namespace (POD_NAMESPACE),
else kube-system."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import gpulet.cli.scorer
from gpulet.cli import main
from scorer.config import ConfigError, ScorerConfig, load_config


def test_the_namespace_is_the_pods_own_else_kube_system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert ScorerConfig().lease_namespace == "kube-system"
    monkeypatch.setenv("POD_NAMESPACE", "gpulet")
    assert ScorerConfig().lease_namespace == "gpulet"


def test_the_file_sets_it_and_a_bad_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / "scorer.yaml"
    path.write_text("leaseNamespace: gpu-operators\n")
    assert load_config(path).lease_namespace == "gpu-operators"
    for bad in ("Kube-System", "''", "a" * 64, "ns/x", "7", "[a]", "-a"):
        path.write_text(f"leaseNamespace: {bad}\n")
        with pytest.raises(ConfigError, match=f"^{path}: leaseNamespace must be a namespace"):
            load_config(path)


def test_the_flag_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "scorer.yaml"
    path.write_text("leaseNamespace: from-the-file\n")
    seen: list[ScorerConfig] = []

    def build(settings: ScorerConfig, kube: Any) -> Any:
        seen.append(settings)
        raise ConfigError("built")  # stop here: reported as a one-line error

    monkeypatch.setattr(gpulet.cli.scorer, "build", build)
    args = ["scorer", "serve", "--standalone", "--config", str(path)]
    result = CliRunner().invoke(main, [*args, "--lease-namespace", "from-the-flag"])
    assert result.exit_code == 1 and "Error: built" in result.output
    result = CliRunner().invoke(main, args)
    assert [s.lease_namespace for s in seen] == ["from-the-flag", "from-the-file"]
