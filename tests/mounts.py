"""Small file systems for fault tests: a tiny tmpfs (a disk that fills up) and a read-only folder.

Mounting needs root (or CAP_SYS_ADMIN); where that is not allowed the tests that need it skip,
saying why. A read-only folder falls back to permissions for a user who is not root (root writes
through them)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["read_only_folder", "resize", "small_tmpfs"]


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no `mount` command here: cannot make a small tmpfs")
    return subprocess.run([mount, *args], capture_output=True, text=True, check=False)


def _umount(folder: Path) -> None:
    umount = shutil.which("umount")
    if umount is not None:
        subprocess.run([umount, "-l", str(folder)], capture_output=True, check=False)


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """``folder`` as a tmpfs of ``size`` (e.g. ``"128k"``), unmounted afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = _mount("-t", "tmpfs", "-o", options, "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); "
            "these tests need root or CAP_SYS_ADMIN"
        )
    try:
        yield folder
    finally:
        _umount(folder)


def resize(folder: Path, size: str) -> None:
    """Give a mounted tmpfs more room (the operator freeing space)."""
    done = _mount("-o", f"remount,size={size}", str(folder))
    assert done.returncode == 0, done.stderr


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_bytes(b"x")
    except OSError:
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """A folder nobody can write to: by permissions, or (for root) a read-only tmpfs."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    try:
        if not _writable(folder):
            yield folder
            return
        folder.chmod(0o755)  # root writes through permissions: mount it read-only instead
        with small_tmpfs(folder, "64k", read_only=True):
            assert not _writable(folder)
            yield folder
    finally:
        if os.path.isdir(folder):
            folder.chmod(0o755)
