"""What `make mutate` mutates, and which tests must kill it.

A Python target is one mutmut run: the modules it mutates, optionally only some of their
functions (mutmut's mutant-name globs), and the test files that cover them. A C mutant is one
hand-written change to the limiter's charge arithmetic, checked against the limiter's and the
region's tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PythonTarget:
    name: str
    #: The files mutmut mutates, relative to the repository root.
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    #: mutmut mutant-name globs (`module.x_function__mutmut_*`, `module.xǁClassǁmethod__mutmut_*`);
    #: empty: every mutant of `modules`.
    only: tuple[str, ...] = ()


@dataclass(frozen=True)
class CMutant:
    name: str
    #: Relative to native/limiter.
    file: str
    original: str
    replacement: str


_SCORER_TESTS = (
    "tests/unit/test_cluster_view_cases.py",
    "tests/unit/test_cluster_invariant.py",
    "tests/unit/test_scorer_properties.py",
    "tests/unit/test_scorer_sync.py",
    "tests/unit/test_scorer_sources.py",
)
_DEVICEPLUGIN_TESTS = (
    "tests/unit/test_deviceplugin_ledger_cases.py",
    "tests/unit/test_deviceplugin_ledger.py",
    "tests/unit/test_deviceplugin_assignment.py",
    "tests/unit/test_deviceplugin_core.py",
    "tests/unit/test_deviceplugin_core_properties.py",
    "tests/unit/test_deviceplugin_decisions.py",
    "tests/unit/test_deviceplugin_kubelet.py",
    "tests/unit/test_tenant_allocate.py",
    "tests/unit/test_accounting_properties.py",
)
_PLACEMENT_TESTS = (
    "tests/unit/test_placement_podspec.py",
    "tests/unit/test_placement_properties.py",
    "tests/unit/test_placement_scenarios.py",
    "tests/unit/test_placement_shipped.py",
    "tests/unit/test_placement_pruning.py",
)

PYTHON_TARGETS = (
    # The extender's view of the cluster, and the bound-pods watch's handling (kube.py's
    # other functions are the API client's plumbing).
    PythonTarget(
        "cluster-view",
        ("scorer/cluster.py", "scorer/kube.py"),
        _SCORER_TESTS,
        only=(
            "scorer.cluster.*",
            "scorer.kube.x_apply_pod__mutmut_*",
            "scorer.kube.x_replace_pods__mutmut_*",
        ),
    ),
    # The device plugin's ledger and checkpoint, and Allocate's matching of a request to a
    # pod's assignment (assignment.py; decisions.py's `Decider._match` calls it).
    PythonTarget(
        "deviceplugin",
        (
            "deviceplugin/ledger.py",
            "deviceplugin/checkpoint.py",
            "deviceplugin/assignment.py",
            "deviceplugin/decisions.py",
        ),
        _DEVICEPLUGIN_TESTS,
        only=(
            "deviceplugin.ledger.*",
            "deviceplugin.checkpoint.*",
            "deviceplugin.assignment.*",
            "deviceplugin.decisions.xǁDeciderǁ_match__mutmut_*",
        ),
    ),
    PythonTarget("placement", ("gpulet/placement/engine.py",), _PLACEMENT_TESTS),
    PythonTarget(
        "share",
        ("gpulet/api/share.py",),
        (
            "tests/unit/test_api_share.py",
            "tests/unit/test_accounting_properties.py",
            "tests/unit/test_deviceplugin_ledger.py",
            "tests/unit/test_placement_scenarios.py",
            "tests/unit/test_placement_properties.py",
            "tests/unit/test_placement_batch.py",
        ),
    ),
)

#: What runs the limiter library (built from native/limiter by tests/limiter_harness.py) and
#: the region's extension (native/_region, built from region.c).
LIMITER_TESTS = (
    "tests/unit/test_region.py",
    "tests/unit/test_region_untrusted.py",
    "tests/unit/test_limiter.py",
)

C_MUTANTS = (
    CMutant(
        "fits: filling the cap exactly is refused",
        "region.c",
        "bytes <= cap - total &&",
        "bytes < cap - total &&",
    ),
    CMutant(
        "fits: a charge already over the cap is not checked",
        "region.c",
        "return total <= cap && bytes <= cap - total",
        "return bytes <= cap - total",
    ),
    CMutant(
        "reserve: no reap of dead processes' charges when full",
        "region.c",
        "if (!fits(total, *own, bytes, cap) && reap_locked(h) > 0)",
        "if (!fits(total, *own, bytes, cap) && 0)",
    ),
    CMutant(
        "reserve: used_after misses the new charge",
        "region.c",
        "        *own += bytes;\n        total += bytes;\n",
        "        *own += bytes;\n",
    ),
    CMutant(
        "release: does not saturate at zero",
        "region.c",
        "*own = *own > bytes ? *own - bytes : 0;",
        "*own = *own - bytes;",
    ),
    CMutant(
        "release: giving back more than held keeps the charge",
        "region.c",
        "*own = *own > bytes ? *own - bytes : 0;",
        "*own = *own > bytes ? *own - bytes : *own;",
    ),
    CMutant(
        "total: a free slot's stale bytes count",
        "region.c",
        "uint64_t u = r->slot[i].pid != 0 ? r->slot[i].used[dev] : 0;",
        "uint64_t u = r->slot[i].used[dev];",
    ),
    CMutant(
        "settle: the driver's smaller reservation is not given back",
        "memory.c",
        "    } else if (actual < charged) {\n        give_back(index, charged - actual);\n",
        "    } else if (actual < charged) {\n",
    ),
    CMutant(
        "settle: a failed correction keeps the up-front charge",
        "memory.c",
        "        if (reserve(index, actual - charged) != CUDA_SUCCESS) {\n"
        "            give_back(index, charged);\n",
        "        if (reserve(index, actual - charged) != CUDA_SUCCESS) {\n",
    ),
    CMutant(
        "share_of: a production device reads the share in its region",
        "compute.c",
        "    if (!batch(index))\n        return floor;\n",
        "",
    ),
    CMutant(
        "share_of: a stale batch share is still followed",
        "compute.c",
        "if (!stamp || gpulet_now_ns() - stamp > SHARE_FRESH_NS)",
        "if (!stamp)",
    ),
    CMutant(
        "pace_before: a batch device at a full share is not paced",
        "compute.c",
        "(!batch(index) && share_of(index) >= 1000)",
        "share_of(index) >= 1000",
    ),
    CMutant(
        "write_share: a production device gets a share",
        "region.c",
        "if (rc == 0 && !(expected->dev[dev].flags & GPULET_LIMIT_BATCH))",
        "if (rc == 0 && 0)",
    ),
)
