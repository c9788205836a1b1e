"""Linux cpulist strings ("0-55,112-167") to and from sorted CPU tuples."""

from __future__ import annotations


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse a kernel cpulist; raises ValueError naming the bad part."""
    cpus: set[int] = set()
    text = text.strip()
    if not text:
        return ()
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise ValueError(f"bad cpulist part {part!r} in {text!r}") from None
        if first < 0 or last < first:
            raise ValueError(f"bad cpulist range {part!r} in {text!r}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def format_cpulist(cpus: tuple[int, ...] | list[int]) -> str:
    """Format CPUs as the kernel does: ascending, with ranges collapsed."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
