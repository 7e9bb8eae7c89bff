"""The ``docshift`` command line, run as a real subprocess: help, version, error lines and exit codes,
``doctor`` against the emulator, and ``docshift emulator`` started and stopped like a user would.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import psutil
import pytest

import docshift
from docshift import emulator as emulator_module
from docshift.emulator import free_port
from docshift.errors import ExitCode
from docshift.store import Query, Write
from docshift.store.firestore import FirestoreStore

DOCSHIFT = str(Path(sys.executable).parent / "docshift")


def clean_env(**extra: str) -> dict[str, str]:
    """The test run's environment without any docshift or emulator settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DOCSHIFT_") and k != "FIRESTORE_EMULATOR_HOST"
    }
    env.update(extra)
    return env


def docshift_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCSHIFT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr
    return result.stderr.rstrip("\n").split("\n")


# --------------------------------------------------------------------------- help and version


def test_help_lists_the_commands_and_exit_codes(tmp_path: Path) -> None:
    result = docshift_cli("--help", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: docshift")
    for text in ["doctor", "emulator", "--config", "--project", "--debug", "15 emulator missing"]:
        assert text in result.stdout
    assert docshift_cli("-h", env=clean_env(), cwd=tmp_path).stdout == result.stdout


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    result = docshift_cli("--version", env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"docshift, version {version('docshift')}"
    assert version("docshift") == docshift.__version__


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    result = docshift_cli("frobnicate", env=clean_env(), cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE
    assert "No such command" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- errors


def test_a_bad_environment_value_is_one_error_line_with_a_hint(tmp_path: Path) -> None:
    result = docshift_cli("status", env=clean_env(DOCSHIFT_BATCH_SIZE="lots"), cwd=tmp_path)
    assert result.returncode == 2 == int(ExitCode.USAGE)
    assert error_lines(result) == [
        "error: config key 'batch_size' from DOCSHIFT_BATCH_SIZE must be a whole number, got 'lots'",
        "  hint: batch_size: documents per commit to start with",
    ]
    assert result.stdout == ""


def test_an_unknown_key_in_docshift_toml_is_one_error_line_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "docshift.toml").write_text('projekt = "x"\n')
    result = docshift_cli("status", env=clean_env(), cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE
    first, hint = error_lines(result)
    assert first == f"error: unknown config key 'projekt' in {tmp_path / 'docshift.toml'}"
    assert hint.startswith("  hint: known keys: ") and "project" in hint


def test_a_missing_emulator_jar_is_one_error_line_with_a_hint(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jar"
    result = docshift_cli("emulator", env=clean_env(DOCSHIFT_EMULATOR_JAR=str(missing)), cwd=tmp_path)
    assert result.returncode == 15 == int(ExitCode.EMULATOR)
    assert error_lines(result) == [
        f"error: DOCSHIFT_EMULATOR_JAR points to {missing}, which is not a file",
        "  hint: point it at cloud-firestore-emulator.jar, or unset it to look for the SDK's",
    ]


@pytest.fixture
def no_java_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has no java, with a jar so the lookup itself succeeds."""
    empty = tmp_path / "bin"
    empty.mkdir()
    jar = tmp_path / "emulator.jar"
    jar.write_bytes(b"dummy")
    return clean_env(PATH=str(empty), DOCSHIFT_EMULATOR_JAR=str(jar))


def test_java_missing_is_said_plainly_with_what_to_install(
    tmp_path: Path, no_java_env: dict[str, str]
) -> None:
    result = docshift_cli("emulator", env=no_java_env, cwd=tmp_path)
    assert result.returncode == ExitCode.EMULATOR
    assert error_lines(result) == [
        "error: Java is not installed, and the Firestore emulator needs it",
        "  hint: install a Java 11+ runtime, e.g. `apt-get install openjdk-17-jre-headless`",
    ]


def test_debug_shows_the_traceback(tmp_path: Path, no_java_env: dict[str, str]) -> None:
    result = docshift_cli("--debug", "emulator", env=no_java_env, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "docshift.errors.EmulatorError: Java is not installed" in result.stderr
    assert "\nerror: " not in "\n" + result.stderr


# --------------------------------------------------------------------------- doctor


def test_doctor_against_the_emulator_prints_ok_lines_and_exits_0(
    cli_env: dict[str, str], tmp_path: Path, emulator_host: str, project_id: str
) -> None:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_first.py").write_text("")
    result = docshift_cli("doctor", env=cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "config"],
        ["ok", "migrations"],
        ["ok", "credentials"],
        ["ok", "reachable"],
        ["ok", "permissions"],
    ]
    assert "FAIL" not in result.stdout
    assert "(1 migration files)" in result.stdout
    assert f"emulator at {emulator_host}" in result.stdout
    assert f"project {project_id}" in result.stdout
    # The permission probe cleaned up after itself.
    store = FirestoreStore(project_id, emulator_host=emulator_host)
    try:
        assert store.count(Query("_docshift")) == 0
    finally:
        store.close()


def test_doctor_without_a_migrations_folder_fails_with_a_fix(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = docshift_cli("doctor", env=cli_env, cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE
    lines = result.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if line.startswith("FAIL")]
    assert len(failed) == 1
    assert lines[failed[0]].split()[:2] == ["FAIL", "migrations"]
    assert f"{tmp_path / 'migrations'} does not exist" in lines[failed[0]]
    assert lines[failed[0] + 1].strip() == "fix: run `docshift init` to create it, or set migrations_dir"
    assert any(line.split()[:2] == ["ok", "permissions"] for line in lines)
    assert "Traceback" not in result.stderr


def test_doctor_reports_a_bad_config_as_a_failed_check(cli_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "migrations").mkdir()
    result = docshift_cli("doctor", env={**cli_env, "DOCSHIFT_BATCH_SIZE": "-3"}, cwd=tmp_path)
    assert result.returncode == ExitCode.USAGE
    first = result.stdout.splitlines()[0]
    assert first.split()[:2] == ["FAIL", "config"]
    assert "'batch_size' from DOCSHIFT_BATCH_SIZE must be greater than 0" in first


# --------------------------------------------------------------------------- docshift emulator


@dataclass
class RunningCli:
    process: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    stdout: list[str] = field(default_factory=list)
    jvm_pids: list[int] = field(default_factory=list)

    def read_until(self, prefix: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.stdout.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line; stdout so far: {self.stdout}")

    def java(self, timeout: float = 30) -> psutil.Process:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                if child.name() == "java":
                    self.jvm_pids.append(child.pid)
                    return child
            time.sleep(0.02)
        raise AssertionError("docshift emulator started no JVM")


StartCli = Callable[..., RunningCli]


@pytest.fixture
def run_emulator_cli(tmp_path: Path) -> Iterator[StartCli]:
    """Starts ``docshift emulator`` subprocesses; stops whatever a failed test left running."""
    started: list[RunningCli] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RunningCli:
        process = subprocess.Popen(
            [DOCSHIFT, "emulator", *args],
            env=env or clean_env(),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,  # no terminal: Ctrl-C cannot reach it, it says how to stop it
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        running = RunningCli(process)

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                running.lines.put(line.rstrip("\n"))
            running.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        started.append(running)
        return running

    yield start
    # Only what these tests started, by pid: the CLI, then its JVM's own process group (which a
    # regression could leave running after the CLI exited).
    for running in started:
        jvms = set(running.jvm_pids)
        if running.process.poll() is None:
            jvms.update(c.pid for c in psutil.Process(running.process.pid).children(recursive=True))
            running.process.terminate()
            try:
                running.process.wait(30)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
        for pid in jvms:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def assert_gone(jvm: psutil.Process, host: str | None = None, timeout: float = 10) -> None:
    pid = jvm.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and psutil.pid_exists(pid):
        time.sleep(0.05)
    assert not psutil.pid_exists(pid), f"the emulator JVM {pid} is still running"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the JVM led its own process group: nothing of it may remain
    if host is not None:
        assert not emulator_module._answers(host)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_emulator_command_prints_the_export_line_and_stops_cleanly(
    run_emulator_cli: StartCli, stop_signal: signal.Signals, emulator_host: str
) -> None:
    env = clean_env(FIRESTORE_EMULATOR_HOST=emulator_host)  # ignored: the command starts its own
    cli = run_emulator_cli(env=env)
    export = cli.read_until("export FIRESTORE_EMULATOR_HOST=")
    host = export.split("=", 1)[1]
    assert host != emulator_host and host.startswith("127.0.0.1:")
    assert any(line.startswith("Firestore emulator (") for line in cli.stdout)
    jvm = cli.java()
    assert os.getpgid(jvm.pid) == jvm.pid

    assert emulator_module._answers(host)
    store = FirestoreStore("demo-cli-emulator", emulator_host=host)
    try:
        [result] = store.commit([Write.set("a/b", {"ok": True})])
        assert result.ok
    finally:
        store.close()

    cli.process.send_signal(stop_signal)
    assert cli.process.wait(60) == 0
    assert cli.process.stderr is not None
    stderr = cli.process.stderr.read()
    assert "emulator stopped" in stderr and "Traceback" not in stderr
    assert f"Stop it with: kill {cli.process.pid}" in stderr and "Press Ctrl-C" not in stderr
    assert_gone(jvm, host)


def test_emulator_command_uses_the_port_it_is_given(run_emulator_cli: StartCli) -> None:
    port = free_port()
    cli = run_emulator_cli("--port", str(port))
    assert cli.read_until("export ") == f"export FIRESTORE_EMULATOR_HOST=127.0.0.1:{port}"
    jvm = cli.java()
    cli.process.send_signal(signal.SIGINT)
    assert cli.process.wait(60) == 0
    assert_gone(jvm, f"127.0.0.1:{port}")


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_while_the_emulator_is_starting_leaves_no_jvm(
    run_emulator_cli: StartCli, stop_signal: signal.Signals
) -> None:
    cli = run_emulator_cli()
    jvm = cli.java()  # the JVM exists but does not answer yet
    cli.process.send_signal(stop_signal)
    code = cli.process.wait(60)
    assert code == ExitCode.INTERRUPTED
    assert_gone(jvm)
    assert not any(line.startswith("export ") for line in cli.stdout)


def test_an_emulator_that_dies_by_itself_is_an_error(run_emulator_cli: StartCli) -> None:
    cli = run_emulator_cli()
    cli.read_until("export ")
    jvm = cli.java()
    jvm.kill()  # a JVM this test started (through the CLI), by pid
    assert cli.process.wait(30) == ExitCode.EMULATOR
    assert cli.process.stderr is not None
    stderr = cli.process.stderr.read()
    assert "error: the Firestore emulator stopped by itself" in stderr
    assert "Traceback" not in stderr
    assert_gone(jvm)
