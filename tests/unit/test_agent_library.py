"""Installing the limiter library and its preload file on the host."""

from __future__ import annotations

from pathlib import Path

from agent.library import install_limiter


def test_installed_once_and_replaced_when_it_changes(tmp_path: Path) -> None:
    source = tmp_path / "build" / "libgpulet-limiter.so"
    source.parent.mkdir()
    source.write_bytes(b"\x7fELF one")
    lib, preload = install_limiter(source, tmp_path / "lib")
    assert lib.read_bytes() == b"\x7fELF one" and lib.stat().st_mode & 0o777 == 0o755
    assert preload.read_text() == f"{lib}\n"
    inode = lib.stat().st_ino
    install_limiter(source, tmp_path / "lib")
    assert lib.stat().st_ino == inode  # the same bytes: not copied again
    source.write_bytes(b"\x7fELF two")
    install_limiter(source, tmp_path / "lib")
    assert lib.read_bytes() == b"\x7fELF two" and lib.stat().st_ino != inode
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["ld.so.preload", lib.name]
