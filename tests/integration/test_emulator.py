"""The emulator harness: where the emulator is found, and that stopping it leaves no process behind.

Lookup tests use fake PATH / HOME folders with dummy jars; the process tests start real second
emulators (besides the session's) and check the JVM and its whole process group are gone afterwards.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from docshift import emulator as emulator_module
from docshift.emulator import Emulator, EmulatorLocation, find_emulator, free_port
from docshift.errors import EmulatorError, ExitCode
from docshift.store import Write
from docshift.store.firestore import FirestoreStore

SDK_JAR = Path("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar")


def touch(path: Path, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 not really a jar")
    path.chmod(mode)
    return path


def fake_sdk(root: Path, with_emulator: bool = True) -> Path:
    """A Cloud SDK layout: <root>/bin/gcloud and, optionally, the emulator component's jar."""
    touch(root / "bin" / "gcloud", 0o755)
    if with_emulator:
        touch(root / SDK_JAR)
    return root


@pytest.fixture
def no_system_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the /usr/lib/google-cloud-sdk fallback at an empty folder (this machine may have one)."""
    folder = tmp_path / "no-system-sdk"
    folder.mkdir()
    monkeypatch.setattr(emulator_module, "_SYSTEM_SDK", folder)
    return folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def empty_path(tmp_path: Path) -> str:
    folder = tmp_path / "empty-bin"
    folder.mkdir()
    return str(folder)


# --------------------------------------------------------------------------- lookup order


def test_a_running_emulator_named_by_firestore_emulator_host_is_used_as_is(tmp_path: Path) -> None:
    jar = touch(tmp_path / "x.jar")
    location = find_emulator({"FIRESTORE_EMULATOR_HOST": "127.0.0.1:9", "DOCSHIFT_EMULATOR_JAR": str(jar)})
    assert location == EmulatorLocation(host="127.0.0.1:9", source="FIRESTORE_EMULATOR_HOST")


def test_an_emulator_given_by_host_is_never_started_or_stopped() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    given = EmulatorLocation(host="127.0.0.1:9", source="FIRESTORE_EMULATOR_HOST")
    emulator = Emulator(given, java="/no/java")
    with emulator as running:
        assert running.host == "127.0.0.1:9"
        assert not running.owned and running.process is None
        assert {p.pid for p in psutil.Process().children(recursive=True)} == before
    assert emulator.host == "127.0.0.1:9"
    emulator.stop()
    assert emulator.host == "127.0.0.1:9"


def test_docshift_emulator_jar_comes_next(tmp_path: Path, home: Path) -> None:
    jar = touch(tmp_path / "custom" / "emulator.jar")
    sdk = fake_sdk(tmp_path / "sdk")
    touch(home / ".cache/firebase/emulators/cloud-firestore-emulator-v1.0.0.jar")
    env = {"DOCSHIFT_EMULATOR_JAR": str(jar), "PATH": str(sdk / "bin"), "HOME": str(home)}
    assert find_emulator(env) == EmulatorLocation(jar=jar, source="DOCSHIFT_EMULATOR_JAR")


def test_docshift_emulator_jar_that_is_not_a_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jar"
    with pytest.raises(EmulatorError, match="DOCSHIFT_EMULATOR_JAR") as caught:
        find_emulator({"DOCSHIFT_EMULATOR_JAR": str(missing), "PATH": ""})
    assert str(missing) in caught.value.message
    with pytest.raises(EmulatorError, match="not a file"):
        find_emulator({"DOCSHIFT_EMULATOR_JAR": str(tmp_path), "PATH": ""})


def test_the_cloud_sdk_of_the_gcloud_on_path_is_used(tmp_path: Path, home: Path, no_system_sdk: Path) -> None:
    sdk = fake_sdk(tmp_path / "google-cloud-sdk")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").symlink_to(sdk / "bin" / "gcloud")  # as package managers install it
    touch(home / ".cache/firebase/emulators/cloud-firestore-emulator-v1.0.0.jar")
    location = find_emulator({"PATH": f"{tmp_path / 'empty'}:{bin_dir}", "HOME": str(home)})
    assert location.jar == sdk / SDK_JAR
    assert location.host is None
    assert str(sdk) in location.source and "Cloud SDK" in location.source


def test_the_system_cloud_sdk_is_used_when_gcloud_on_path_lacks_the_emulator(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    without = fake_sdk(tmp_path / "sdk-without-emulator", with_emulator=False)
    system = fake_sdk(tmp_path / "usr-lib-google-cloud-sdk")
    monkeypatch.setattr(emulator_module, "_SYSTEM_SDK", system)
    touch(home / ".cache/firebase/emulators/cloud-firestore-emulator-v1.0.0.jar")
    location = find_emulator({"PATH": str(without / "bin"), "HOME": str(home)})
    assert location.jar == system / SDK_JAR
    assert str(system) in location.source


def test_the_system_cloud_sdk_is_used_without_gcloud_on_path(
    tmp_path: Path, empty_path: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = fake_sdk(tmp_path / "usr-lib-google-cloud-sdk")
    monkeypatch.setattr(emulator_module, "_SYSTEM_SDK", system)
    assert find_emulator({"PATH": empty_path, "HOME": str(home)}).jar == system / SDK_JAR


def test_the_default_system_sdk_location_is_the_debian_package_one() -> None:
    assert Path("/usr/lib/google-cloud-sdk") == emulator_module._SYSTEM_SDK


def test_the_firebase_cache_comes_last_and_the_newest_version_wins(
    tmp_path: Path, empty_path: str, home: Path, no_system_sdk: Path
) -> None:
    cache = home / ".cache/firebase/emulators"
    for version in ["v1.19.9", "v1.19.10", "v1.2.0", "v1.18.2"]:
        touch(cache / f"cloud-firestore-emulator-{version}.jar")
    touch(cache / "cloud-storage-rules-runtime-v9.9.9.jar")
    without = fake_sdk(tmp_path / "sdk-without-emulator", with_emulator=False)
    location = find_emulator({"PATH": f"{empty_path}:{without / 'bin'}", "HOME": str(home)})
    assert location.jar == cache / "cloud-firestore-emulator-v1.19.10.jar"
    assert location.source == "Firebase CLI cache"


def test_nothing_found_is_a_clear_error_saying_what_to_install(
    empty_path: str, home: Path, no_system_sdk: Path
) -> None:
    with pytest.raises(EmulatorError, match="emulator was not found") as caught:
        find_emulator({"PATH": empty_path, "HOME": str(home)})
    error = caught.value
    assert error.exit_code == ExitCode.EMULATOR
    assert int(error.exit_code) == 15
    assert error.hint is not None
    for advice in [
        "gcloud components install cloud-firestore-emulator",
        "firebase setup:emulators:firestore",
        "DOCSHIFT_EMULATOR_JAR",
        "FIRESTORE_EMULATOR_HOST",
    ]:
        assert advice in error.hint


def test_an_empty_firestore_emulator_host_does_not_count(
    empty_path: str, home: Path, no_system_sdk: Path
) -> None:
    with pytest.raises(EmulatorError):
        find_emulator({"FIRESTORE_EMULATOR_HOST": "", "PATH": empty_path, "HOME": str(home)})


# --------------------------------------------------------------------------- Java


def test_java_missing_from_path_is_said_plainly(
    tmp_path: Path, empty_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", empty_path)
    emulator = Emulator(EmulatorLocation(jar=touch(tmp_path / "e.jar"), source="test"))
    with pytest.raises(EmulatorError, match="Java is not installed") as caught:
        emulator.start()
    assert caught.value.hint is not None and "Java" in caught.value.hint
    assert caught.value.exit_code == ExitCode.EMULATOR
    assert emulator.process is None and emulator.host is None


def test_a_java_that_cannot_be_run_is_an_emulator_error(tmp_path: Path) -> None:
    emulator = Emulator(EmulatorLocation(jar=touch(tmp_path / "e.jar")), java=str(tmp_path / "no-java"))
    with pytest.raises(EmulatorError, match="cannot run Java"):
        emulator.start()
    assert emulator.process is None


# --------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def real_location() -> EmulatorLocation:
    """The real emulator jar (a FIRESTORE_EMULATOR_HOST given to the test run is ignored here)."""
    env = {k: v for k, v in os.environ.items() if k != "FIRESTORE_EMULATOR_HOST"}
    location = find_emulator(env)
    assert location.jar is not None
    return location


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Process groups of JVMs a test started; any still running at the end (a regression) are killed."""
    groups: list[int] = []
    yield groups
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)


def answers(host: str) -> bool:
    return emulator_module._answers(host)


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_nothing_left(pid: int, pgid: int, host: str | None = None, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (group_exists(pgid) or psutil.pid_exists(pid)):
        time.sleep(0.05)
    assert not psutil.pid_exists(pid), f"emulator JVM {pid} is still there"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    if host is not None:
        assert not answers(host)


def started_tree(emulator: Emulator, leftovers: list[int]) -> tuple[int, int, list[int]]:
    assert emulator.process is not None
    pid = emulator.process.pid
    leftovers.append(pid)
    pgid = os.getpgid(pid)
    children = [child.pid for child in psutil.Process(pid).children(recursive=True)]
    return pid, pgid, children


def test_stop_leaves_no_emulator_process_behind(
    real_location: EmulatorLocation, leftovers: list[int]
) -> None:
    emulator = Emulator(real_location)
    host = emulator.start()
    pid, pgid, children = started_tree(emulator, leftovers)
    assert pgid == pid != os.getpgid(0), "the JVM must run in its own process group"
    assert answers(host)
    assert psutil.Process(pid).name() == "java"

    emulator.stop()

    assert_nothing_left(pid, pgid, host)
    assert all(not psutil.pid_exists(child) for child in children)
    assert not emulator.owned and emulator.host is None
    emulator.stop()  # safe twice


STARTER = """
import sys, time
from docshift.emulator import Emulator, EmulatorLocation
from pathlib import Path
emulator = Emulator(EmulatorLocation(jar=Path(sys.argv[1])))
emulator.start()
assert emulator.process is not None
print(emulator.process.pid, emulator.host, flush=True)
time.sleep(120)
"""


def test_a_starter_killed_with_sigkill_takes_its_emulator_with_it(
    real_location: EmulatorLocation, leftovers: list[int]
) -> None:
    """A run or test session killed with SIGKILL cleans nothing up; its JVM (in a session of its
    own, so Ctrl-C does not reach it) used to stay, holding its port and ~1 GiB. The parent-death
    signal ends it with its starter."""
    assert real_location.jar is not None
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(real_location.jar)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        pid_text, host = starter.stdout.readline().split()
        pid = int(pid_text)
        leftovers.append(pid)
        assert psutil.Process(pid).name() == "java" and answers(host)
        starter.kill()
        starter.wait(10)
        assert_nothing_left(pid, pid, host, timeout=10)
    finally:
        starter.kill()
        starter.wait(10)


def test_an_exception_inside_the_with_block_still_stops_the_emulator(
    real_location: EmulatorLocation, leftovers: list[int]
) -> None:
    seen: dict[str, int] = {}
    with pytest.raises(RuntimeError, match="boom"), Emulator(real_location) as emulator:
        assert emulator.host is not None
        seen["pid"], seen["pgid"], _ = started_tree(emulator, leftovers)
        seen_host = emulator.host
        raise RuntimeError("boom")
    assert_nothing_left(seen["pid"], seen["pgid"], seen_host)


def test_an_emulator_on_a_chosen_port_works_for_the_store(
    real_location: EmulatorLocation, leftovers: list[int]
) -> None:
    port = free_port()
    with Emulator(real_location, port=port) as emulator:
        assert emulator.host == f"127.0.0.1:{port}"
        pid, pgid, _ = started_tree(emulator, leftovers)
        store = FirestoreStore("demo-own-port", emulator_host=emulator.host)
        try:
            [result] = store.commit([Write.set("a/b", {"v": 1})])
            assert result.ok
            doc = store.get("a/b")
            assert doc is not None and doc.data == {"v": 1}
        finally:
            store.close()
    assert_nothing_left(pid, pgid, f"127.0.0.1:{port}")


def test_a_jvm_that_exits_at_start_is_reported_with_its_output(tmp_path: Path) -> None:
    emulator = Emulator(EmulatorLocation(jar=touch(tmp_path / "broken.jar")), startup_timeout=30)
    with pytest.raises(EmulatorError, match="exited at start") as caught:
        emulator.start()
    assert "CloudFirestore" in caught.value.message or "Error" in caught.value.message
    assert emulator.process is None and emulator._log is None


def test_a_startup_timeout_stops_the_half_started_jvm(
    real_location: EmulatorLocation, leftovers: list[int]
) -> None:
    emulator = Emulator(real_location, startup_timeout=0.3)
    seen: list[tuple[int, int]] = []

    def watch() -> None:
        while not seen:
            process = emulator.process
            if process is not None:
                leftovers.append(process.pid)
                try:
                    seen.append((process.pid, os.getpgid(process.pid)))
                except ProcessLookupError:  # already stopped and reaped: it led its own group
                    seen.append((process.pid, process.pid))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with pytest.raises(EmulatorError, match="did not answer within"):
        emulator.start()
    watcher.join(5)
    assert seen, "the JVM was never started"
    assert_nothing_left(*seen[0])
    assert emulator.process is None and emulator.host is None


def test_ctrl_c_while_the_emulator_starts_stops_the_jvm(
    real_location: EmulatorLocation, leftovers: list[int]
) -> None:
    emulator = Emulator(real_location)
    seen: list[tuple[int, int]] = []

    def interrupt_once_started() -> None:
        while emulator.process is None:
            time.sleep(0.005)
        process = emulator.process
        leftovers.append(process.pid)
        seen.append((process.pid, os.getpgid(process.pid)))
        _thread.interrupt_main()  # the SIGINT a terminal's Ctrl-C delivers

    threading.Thread(target=interrupt_once_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        emulator.start()
    assert seen
    assert_nothing_left(*seen[0])
    assert emulator.process is None


def test_the_emulator_runs_in_its_own_session(real_location: EmulatorLocation, leftovers: list[int]) -> None:
    """A terminal's Ctrl-C reaches docshift, not the JVM: docshift stops it (after cleaning up)."""
    with Emulator(real_location) as emulator:
        pid, pgid, _ = started_tree(emulator, leftovers)
        assert os.getsid(pid) == pid != os.getsid(0)
    assert_nothing_left(pid, pgid)


def test_a_jvm_ignoring_sigterm_is_killed(real_location: EmulatorLocation, leftovers: list[int]) -> None:
    emulator = Emulator(real_location)
    emulator.start()
    pid, pgid, _ = started_tree(emulator, leftovers)
    psutil.Process(pid).suspend()  # a stopped JVM cannot act on SIGTERM
    started = time.monotonic()
    emulator.stop(timeout=0.5)
    assert time.monotonic() - started < 5
    assert_nothing_left(pid, pgid)


def test_free_port_gives_a_bindable_port() -> None:
    import socket

    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
