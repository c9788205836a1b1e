"""`make mutate`: mutation testing of the modules that guard an invariant (targets.py).

Python modules go through mutmut, one run per target, each in a scratch copy of the tree under
build/mutation/work/<target> (mutmut reads its settings from setup.cfg in the directory it
runs in, and writes its mutated copy, mutants/, there). The limiter's C mutants are applied
one at a time to another scratch copy, which builds the region's extension and the limiter
library from its own native/limiter and runs the limiter's tests.

Prints, per module, the mutants generated, killed, survived, run by no selected test, timed
out, and the survival rate; writes the survivors with their diffs to
build/mutation/survivors.md and the counts to build/mutation/summary.json. Each target's
verdicts are kept in its work directory (verdicts.json):

    python -m tests.mutation.run                     # every target
    python -m tests.mutation.run --only share,limiter-c
    python -m tests.mutation.run --survivors         # only the last run's survivors again
    python -m tests.mutation.run --report            # the last run's report, running nothing
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mutmut.stats import status_by_exit_code

from tests.mutation.targets import C_MUTANTS, LIMITER_TESTS, PYTHON_TARGETS, CMutant, PythonTarget

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "mutation"
C_TARGET = "limiter-c"
#: What a scratch copy holds: the packages, the tests and pytest's settings.
TREE = (
    *("gpulet", "scorer", "deviceplugin", "native", "agent"),
    *("tests", "bench", "docs", "pyproject.toml"),  # the limiter's tests read bench/ and docs/
)
#: The build backend's outputs a copy must carry (tests/conftest.py checks they are current).
OUTPUTS = ("native/_region.*.so", "native/lib/*.so", "deviceplugin/api/*_pb2*")
#: mutmut's statuses, folded into the columns printed (anything else: "other").
FOLD = {
    "killed": "killed",
    "caught by type check": "killed",
    "survived": "survived",
    "no tests": "no tests",
    "timeout": "timed out",
}
DEAD = ("killed", "timed out")
COLUMNS = ("generated", "killed", "survived", "no tests", "timed out", "other")
C_TEST_TIMEOUT_S = 600
#: pytest's arguments for every test run (pytest_plugin.py says why).
PYTEST_ARGS = ("-p", "no:cacheprovider", "-p", "tests.mutation.pytest_plugin")

#: module path -> mutant name -> verdict (a value of FOLD, or "other").
Verdicts = dict[str, dict[str, str]]


@dataclass
class Module:
    """The verdicts on one module's mutants, and the survivors' diffs."""

    path: str
    counts: Counter[str] = field(default_factory=Counter)
    survivors: list[tuple[str, str, str]] = field(default_factory=list)  # (name, verdict, diff)

    @property
    def survival(self) -> float:
        alive = self.counts["generated"] - self.counts["killed"] - self.counts["timed out"]
        return alive / self.counts["generated"] if self.counts["generated"] else 0.0


def work_dir(target: str) -> Path:
    return OUT / "work" / target


def scratch_copy(target: str) -> Path:
    """A fresh copy of the tree under build/mutation/work/`target`."""
    missing = [pattern for pattern in OUTPUTS if not list(ROOT.glob(pattern))]
    if missing:
        sys.exit(f"build outputs missing: {', '.join(missing)}; run `make native`")
    work = work_dir(target)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "_region.c", "*.o")
    for entry in TREE:
        source = ROOT / entry
        if source.is_dir():
            shutil.copytree(source, work / entry, ignore=ignore)
        else:
            shutil.copy2(source, work / entry)
    return work


def child_env(work: Path | None = None) -> dict[str, str]:
    """This environment, with the repository's root off PYTHONPATH (the copy's code must be
    the one imported) and `work` on it when given."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [p for p in paths if Path(p).resolve() != ROOT]
    if work is not None:
        paths.insert(0, str(work))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def load_verdicts(target: str) -> Verdicts:
    path = work_dir(target) / "verdicts.json"
    if not path.exists():
        sys.exit(f"{target}: no verdicts from an earlier run ({path})")
    verdicts: Verdicts = json.loads(path.read_text())
    return verdicts


def save_verdicts(target: str, verdicts: Verdicts) -> None:
    (work_dir(target) / "verdicts.json").write_text(json.dumps(verdicts, indent=1) + "\n")


def alive(verdicts: Verdicts) -> list[str]:
    return [n for by_name in verdicts.values() for n, v in by_name.items() if v not in DEAD]


# ---- Python: mutmut --------------------------------------------------------------------


def _cfg_list(key: str, values: Iterable[str]) -> str:
    return f"{key} =\n" + "".join(f"    {v}\n" for v in values)


def mutmut_config(target: PythonTarget) -> str:
    """setup.cfg's [mutmut] section: only the target's modules are mutmut's sources; the rest
    of the tree is copied beside them unchanged (also_copy keeps the files' times, so the
    build outputs stay newer than what they are built from)."""
    packages = [entry for entry in TREE if entry not in ("tests", "pyproject.toml")]
    return (
        "[mutmut]\n"
        + _cfg_list("source_paths", target.modules)
        + _cfg_list("also_copy", packages)
        + _cfg_list("pytest_add_cli_args", PYTEST_ARGS)
        + _cfg_list("pytest_add_cli_args_test_selection", target.tests)
    )


def mutmut(work: Path, *args: str, log: Path | None = None) -> str:
    """Runs mutmut in `work`; its output, or, with `log`, its output written there as it
    comes (`tail -f` shows a run's progress)."""
    argv = [sys.executable, "-c", "from mutmut.__main__ import cli; cli()", *args]
    with open(log or os.devnull, "w") as sink:
        proc = subprocess.run(
            argv,
            cwd=work,
            env=child_env(),
            stdout=sink if log else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        where = f"; see {log}" if log else f":\n{proc.stdout}"
        raise RuntimeError(f"mutmut {' '.join(args)} exited {proc.returncode}{where}")
    return proc.stdout or ""


def run_python(target: PythonTarget, max_children: int, survivors: bool) -> None:
    """A mutmut run over the target (with `survivors`, over the last run's survivors only:
    the other verdicts stand); its verdicts saved."""
    before = load_verdicts(target.name) if survivors else {}
    names = alive(before) if survivors else list(target.only)
    if survivors and not names:
        return
    work = scratch_copy(target.name)
    (work / "setup.cfg").write_text(mutmut_config(target))
    mutmut(work, "run", "--max-children", str(max_children), *names, log=OUT / f"{target.name}.log")
    save_verdicts(target.name, verdicts_from_meta(target, names, before))


def verdicts_from_meta(
    target: PythonTarget, names: Sequence[str], before: Verdicts | None = None
) -> Verdicts:
    """`before`, with the verdicts mutmut wrote on the mutants `names` (globs; none: all)."""
    verdicts: Verdicts = {}
    for path in target.modules:
        meta = json.loads((work_dir(target.name) / "mutants" / f"{path}.meta").read_text())
        by_name = verdicts[path] = dict((before or {}).get(path, {}))
        for name, code in meta["exit_code_by_key"].items():
            if any(fnmatch.fnmatch(name, g) for g in names or ("*",)):
                by_name[name] = FOLD.get(status_by_exit_code[code], "other")
    return verdicts


def python_diff(target: str, name: str) -> str:
    return mutmut(work_dir(target), "show", name)


# ---- C: hand-written mutants of the limiter ----------------------------------------------


def _python(work: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=work,
        env=child_env(work),
        capture_output=True,
        text=True,
        check=False,
    )


def build_native(work: Path) -> str | None:
    """Builds the copy's region extension and limiter library from its native/limiter, as the
    build backend does (native/build_region.py, native/build_limiter.py); the compiler's
    complaint when either fails."""
    for old in (work / "native").glob("_region.*"):
        old.unlink()
    region = _python(work, "from native.build_region import ffibuilder; ffibuilder.compile('.')")
    if region.returncode != 0:
        return region.stderr
    limiter = _python(
        work,
        "from pathlib import Path; from native import build_limiter as b; "
        "b.build(Path('native/lib') / b.SONAME)",
    )
    return limiter.stderr if limiter.returncode != 0 else None


def limiter_tests(work: Path) -> str:
    """'killed', 'survived', 'timed out', or 'other' (pytest could not run the tests)."""
    argv = [sys.executable, "-m", "pytest", "-x", "-q", *PYTEST_ARGS, *LIMITER_TESTS]
    try:
        proc = subprocess.run(
            argv,
            cwd=work,
            env=child_env(work),
            capture_output=True,
            text=True,
            timeout=C_TEST_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    return {0: "survived", 1: "killed"}.get(proc.returncode, "other")


def mutated(mutant: CMutant) -> tuple[str, str]:
    """(the mutated file's text, the mutation's unified diff)."""
    path = f"native/limiter/{mutant.file}"
    before = (ROOT / path).read_text()
    if before.count(mutant.original) != 1:
        raise ValueError(f"{mutant.name}: the original snippet is not once in {path}")
    after = before.replace(mutant.original, mutant.replacement)
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), path, path, n=2
    )
    return after, "".join(lines)


def run_c(survivors: bool) -> None:
    before = load_verdicts(C_TARGET) if survivors else {}
    chosen = set(alive(before)) if survivors else {m.name for m in C_MUTANTS}
    mutants = [m for m in C_MUTANTS if m.name in chosen]
    texts = [mutated(m)[0] for m in mutants]  # every snippet checked before the long part
    work = scratch_copy(C_TARGET)
    limiter = work / "native" / "limiter"
    pristine = {m.file: (limiter / m.file).read_text() for m in mutants}
    if (problem := build_native(work)) is not None or limiter_tests(work) != "survived":
        sys.exit(f"the unmutated limiter does not build or pass its tests: {problem or ''}")
    verdicts: Verdicts = {f"native/limiter/{f}": {} for f in pristine} | before
    for mutant, text in zip(mutants, texts, strict=True):
        for name, original in pristine.items():
            (limiter / name).write_text(original)
        (limiter / mutant.file).write_text(text)
        verdict = "other" if build_native(work) is not None else limiter_tests(work)
        verdicts[f"native/limiter/{mutant.file}"][mutant.name] = verdict
        print(f"    {verdict:9}  {mutant.file}: {mutant.name}", flush=True)
    save_verdicts(C_TARGET, verdicts)


def c_diff(name: str) -> str:
    return mutated(next(m for m in C_MUTANTS if m.name == name))[1]


# ---- the report --------------------------------------------------------------------------


def modules_of(target: str) -> list[Module]:
    modules = []
    for path, by_name in load_verdicts(target).items():
        module = Module(path)
        for name, verdict in sorted(by_name.items()):
            module.counts["generated"] += 1
            module.counts[verdict] += 1
            if verdict not in DEAD:
                diff = c_diff(name) if target == C_TARGET else python_diff(target, name)
                module.survivors.append((name, verdict, diff))
        modules.append(module)
    return modules


def table(modules: Sequence[Module]) -> str:
    head = f"{'module':34}" + "".join(f"{c:>10}" for c in COLUMNS) + f"{'survival':>10}"
    rows = [head]
    for m in modules:
        cells = "".join(f"{m.counts[c]:>10}" for c in COLUMNS)
        rows.append(f"{m.path:34}{cells}{m.survival:>10.1%}")
    return "\n".join(rows)


def survivors_report(modules: Sequence[Module]) -> str:
    parts = ["# Surviving mutants\n"]
    for m in modules:
        if not m.survivors:
            continue
        parts.append(f"\n## {m.path}: {len(m.survivors)} of {m.counts['generated']}\n")
        for name, verdict, diff in m.survivors:
            parts.append(f"\n### {name} ({verdict})\n\n```diff\n{diff.strip()}\n```\n")
    return "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    names = [t.name for t in PYTHON_TARGETS] + [C_TARGET]
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", default=",".join(names), help=f"of {','.join(names)}")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--survivors", action="store_true", help="the last run's survivors only")
    mode.add_argument("--report", action="store_true", help="the last run's report only")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    if unknown := set(chosen) - set(names):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    OUT.mkdir(parents=True, exist_ok=True)
    runs: dict[str, Callable[[bool], None]] = {
        t.name: functools.partial(run_python, t, args.max_children) for t in PYTHON_TARGETS
    }
    runs[C_TARGET] = run_c
    seconds: dict[str, float] = {}
    for name in names:
        if name not in chosen or args.report:
            continue
        print(f"{name}: {'the last run survivors' if args.survivors else 'all'}", flush=True)
        start = time.monotonic()
        runs[name](args.survivors)
        seconds[name] = round(time.monotonic() - start)
    modules = [m for name in names if name in chosen for m in modules_of(name)]
    print(table(modules))
    if seconds:
        print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    (OUT / "survivors.md").write_text(survivors_report(modules))
    summary = {"seconds": seconds, "modules": [{"path": m.path, **m.counts} for m in modules]}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"survivors: {OUT.relative_to(ROOT) / 'survivors.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
