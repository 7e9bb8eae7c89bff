"""Errors that show the cause, through the real command line: every error path ends with one
``error:`` line and a ``hint:`` line, with the exit code the README's table gives; and a store that
cannot be reached (a closed port, a host name that does not resolve, a host that never answers,
Cloud Firestore without a network) fails within seconds saying what was tried.

No timings are asserted (the machine is shared): each command runs under a generous subprocess
timeout, so a command that falls back to retrying for ~15 s fails the test by timing out.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from docshift.emulator import free_port
from docshift.errors import ExitCode, PermanentError
from docshift.store.firestore import FirestoreStore
from tests.integration.run_support import docshift

QUICK = 15.0
"""Seconds a command that cannot reach its store may take before the test fails (it used to take ~14)."""
GOOD = 'collection = "users"\n\ndef up(doc):\n    return doc.data\n'


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without docshift, emulator, Google or proxy settings."""
    dropped = ("DOCSHIFT_", "FIRESTORE_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(dropped) and k.lower() not in ("grpc_proxy", "https_proxy", "http_proxy")
    }
    env["HOME"] = env.get("HOME", "/nonexistent")
    env.update(extra)
    return env


def error_and_hint(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """The last two lines of stderr, which must be the error and its hint."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.rstrip("\n").split("\n")
    assert len(lines) >= 2, done.stderr
    error, hint = lines[-2:]
    assert error.startswith("error: "), done.stderr
    assert hint.startswith("  hint: ") and len(hint) > len("  hint: ") + 10, done.stderr
    return error[len("error: ") :], hint[len("  hint: ") :]


# --------------------------------------------------------------------------- a store that is not there


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_a.py").write_text(GOOD, encoding="utf-8")
    (tmp_path / "docshift.toml").write_text("", encoding="utf-8")
    return tmp_path


@pytest.fixture
def silent_host() -> Iterator[str]:
    """A host:port that accepts TCP connections and never says a word (a firewall that lets the
    handshake through, a hung server): gRPC would wait ~20 s for it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("command", [("status",), ("run", "--execute"), ("rollback", "--to", "0001")])
def test_a_closed_emulator_port_fails_at_once_saying_what_was_tried(
    folder: Path, command: tuple[str, ...]
) -> None:
    host = f"127.0.0.1:{free_port()}"
    env = clean_env(DOCSHIFT_EMULATOR_HOST=host, DOCSHIFT_PROJECT="demo-nowhere")
    done = docshift(folder, env, *command, timeout=QUICK)
    assert done.returncode == ExitCode.STORE, done.stderr
    error, hint = error_and_hint(done)
    assert error == (
        f"cannot reach the Firestore emulator at {host} (project demo-nowhere, database (default)): "
        "connection refused: nothing listens on that port"
    )
    assert "docshift emulator" in hint and "set by DOCSHIFT_EMULATOR_HOST" in hint


def test_a_host_name_that_does_not_resolve_fails_at_once(folder: Path) -> None:
    env = clean_env(FIRESTORE_EMULATOR_HOST="notahost.invalid:8080", DOCSHIFT_PROJECT="demo-nowhere")
    done = docshift(folder, env, "status", timeout=QUICK)
    assert done.returncode == ExitCode.STORE, done.stderr
    error, hint = error_and_hint(done)
    assert error == (
        "cannot reach the Firestore emulator at notahost.invalid:8080 (project demo-nowhere, database "
        "(default)): the host name does not resolve"
    )
    assert "FIRESTORE_EMULATOR_HOST" in hint


def test_a_host_that_never_answers_fails_after_the_connect_deadline(folder: Path, silent_host: str) -> None:
    env = clean_env(FIRESTORE_EMULATOR_HOST=silent_host, DOCSHIFT_PROJECT="demo-silent")
    done = docshift(folder, env, "status", timeout=QUICK)
    assert done.returncode == ExitCode.STORE, done.stderr
    error, _ = error_and_hint(done)
    assert error == (
        f"cannot reach the Firestore emulator at {silent_host} (project demo-silent, database (default)): "
        "no connection within 3 s"
    )
    longer = docshift(folder, {**env, "DOCSHIFT_CONNECT_TIMEOUT_SECONDS": "1.5"}, "status", timeout=QUICK)
    assert error_and_hint(longer)[0].endswith("no connection within 1.5 s")


@pytest.fixture
def service_account(tmp_path: Path) -> Path:
    """A well-formed service-account key for project my-project (never accepted by Google: the key
    is made up here), so that credentials are found and only the network is missing."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / "key.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "my-project",
                "private_key_id": "0",
                "private_key": pem,
                "client_email": "migrator@my-project.iam.gserviceaccount.com",
                "client_id": "0",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        ),
        encoding="utf-8",
    )
    return path


def test_cloud_firestore_without_a_network_fails_at_once_saying_what_was_tried(
    folder: Path, service_account: Path
) -> None:
    # No network, made certain: gRPC goes through a proxy that is not there.
    env = clean_env(
        GOOGLE_APPLICATION_CREDENTIALS=str(service_account), grpc_proxy=f"http://127.0.0.1:{free_port()}"
    )
    done = docshift(folder, env, "status", timeout=QUICK)
    assert done.returncode == ExitCode.STORE, done.stderr
    error, hint = error_and_hint(done)
    assert error.startswith(
        "cannot reach Cloud Firestore at firestore.googleapis.com:443 "
        "(project my-project, database (default)): "
    )
    assert "network" in hint and "FIRESTORE_EMULATOR_HOST" in hint


def doctor_lines(done: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    """(mark, check) of each check line; every FAIL line must be followed by its fix."""
    lines = done.stdout.rstrip("\n").split("\n")
    checks = []
    for index, line in enumerate(lines):
        if line.startswith(("FAIL", " ok ")):
            checks.append((line[:4].strip(), line.split()[1]))
            if line.startswith("FAIL"):
                assert lines[index + 1].strip().startswith("fix: "), done.stdout
    return checks


def test_doctor_with_nothing_answering_says_which_check_failed_and_how_to_fix_it(folder: Path) -> None:
    host = f"127.0.0.1:{free_port()}"
    env = clean_env(FIRESTORE_EMULATOR_HOST=host, DOCSHIFT_PROJECT="demo-nowhere")
    done = docshift(folder, env, "doctor", timeout=QUICK)
    assert done.returncode == ExitCode.STORE, done.stdout + done.stderr
    assert doctor_lines(done) == [
        ("ok", "config"),
        ("ok", "migrations"),
        ("ok", "credentials"),
        ("FAIL", "reachable"),
    ]
    assert f"cannot reach the Firestore emulator at {host}" in done.stdout


def test_doctor_without_a_project_is_a_config_failure_with_a_fix(folder: Path, emulator_host: str) -> None:
    done = docshift(folder, clean_env(FIRESTORE_EMULATOR_HOST=emulator_host), "doctor", timeout=QUICK)
    assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
    assert doctor_lines(done)[-1] == ("FAIL", "project")
    assert "no project id given" in done.stdout


def test_a_malformed_project_id_that_reaches_the_emulator_is_explained(emulator_host: str) -> None:
    """The config refuses such ids before any store is opened; the adapter, given one anyway, turns
    the emulator's bare UNKNOWN into what was asked and what to check."""
    store = FirestoreStore("x.y", emulator_host=emulator_host)
    try:
        with pytest.raises(PermanentError) as caught:
            store.list_collections()
    finally:
        store.close()
    assert caught.value.message == (
        "the store answered UNKNOWN without saying why "
        f"(project x.y, database (default) (emulator {emulator_host}))"
    )
    assert caught.value.hint is not None and "--project" in caught.value.hint


# --------------------------------------------------------------------------- every error path has a hint


def migration(body: str) -> dict[str, str]:
    return {"migrations/0001_a.py": body + "\n\ndef up(doc):\n    return doc.data\n"}


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    code: ExitCode
    says: str
    files: dict[str, str] = field(default_factory=lambda: {"migrations/0001_a.py": GOOD})
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    Case(
        "syntax error in a migration",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "migrations/0001_a.py:2: syntax error",
        {"migrations/0001_a.py": 'collection = "users"\ndef up(doc)\n    return doc.data\n'},
    ),
    Case(
        "missing config file", ("--config", "nope.toml", "status"), ExitCode.USAGE, "nope.toml does not exist"
    ),
    Case(
        "resume with nothing to resume", ("run", "--execute", "--resume"), ExitCode.USAGE, "no unfinished run"
    ),
    Case(
        "where not a list",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "where must be a list of (field, op, value) tuples, got a str",
        migration('collection = "users"\nwhere = "status == active"'),
    ),
    Case(
        "limit below 1",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "limit must be a whole number above 0 or None, got 0",
        migration('collection = "users"\nlimit = 0'),
    ),
    Case(
        "rollback with a run id and --to",
        ("rollback", "20250101T000000-abcdef", "--to", "0001"),
        ExitCode.USAGE,
        "both were given)",
    ),
    Case("rollback with neither", ("rollback",), ExitCode.USAGE, "(neither was given)"),
    Case(
        "in filter with too many values",
        ("run", "--execute"),
        ExitCode.MIGRATION_FILE,
        "where: filter status in has 31 values; Firestore takes at most 30 in one filter",
        migration('collection = "users"\nwhere = [("status", "in", list(range(31)))]'),
    ),
    Case(
        "in filters combining into too many disjunctions",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "combine into 32 disjunctions",
        migration('collection = "users"\nwhere = [("a", "in", [1, 2]), ("b", "in", list(range(16)))]'),
    ),
    Case(
        "in filter with an empty list",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "has an empty list",
        migration('collection = "users"\nwhere = [("status", "in", [])]'),
    ),
    Case("missing project", ("status",), ExitCode.USAGE, "no project id given", env={"DOCSHIFT_PROJECT": ""}),
    Case(
        "malformed project id", ("--project", "My Project", "status"), ExitCode.USAGE, "is not a project id"
    ),
    Case("malformed database id", ("--database", "Bad DB", "status"), ExitCode.USAGE, "is not a database id"),
    Case(
        "emulator address with a scheme",
        ("--emulator-host", "http://localhost:8080", "status"),
        ExitCode.USAGE,
        "without a scheme",
    ),
    Case(
        "emulator address without a port",
        ("status",),
        ExitCode.USAGE,
        "must be host:port",
        env={"FIRESTORE_EMULATOR_HOST": "localhost"},
    ),
    Case(
        "memory limits crossed",
        ("status",),
        ExitCode.USAGE,
        "memory_soft_limit_mb 2000 must be below",
        {"docshift.toml": "memory_soft_limit_mb = 2000\n"},
    ),
    Case(
        "integrity thresholds crossed",
        ("status",),
        ExitCode.USAGE,
        "integrity_critical 99.0 must not be above",
        {"docshift.toml": "integrity_critical = 99\n"},
    ),
    Case(
        "copy_to its own source",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "copy_to is the source collection itself",
        migration('collection = "users"\ncopy_to = "users"'),
    ),
    Case(
        "in filter on a single value",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "needs a list value",
        migration('collection = "users"\nwhere = [("a", "in", 1)]'),
    ),
    Case(
        "rules not a list",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "rules must be a list, got a str",
        migration('collection = "users"\nrules = "required"'),
    ),
    Case(
        "rule without fields",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "required() needs at least one field name",
        migration('from docshift.validators import required\ncollection = "users"\nrules = [required()]'),
    ),
    Case(
        "description empty",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "description must be a non-empty string",
        migration('collection = "users"\ndescription = ""'),
    ),
    Case(
        "both targets",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "set either collection or collection_group",
        migration('collection = "users"\ncollection_group = "orders"'),
    ),
    Case(
        "up not a function",
        ("run",),
        ExitCode.MIGRATION_FILE,
        "up must be a function",
        {"migrations/0001_a.py": 'collection = "users"\nup = 3\n'},
    ),
    Case(
        "stages with limit",
        ("run", "--stages", "10%,100%", "--limit", "3"),
        ExitCode.USAGE,
        "cannot be combined with --limit",
    ),
    Case(
        "validate sample and full",
        ("validate", "0001", "--sample", "3", "--full"),
        ExitCode.USAGE,
        "give --sample N or --full, not both",
    ),
    Case(
        "backup with --all and names",
        ("backup", "users", "--all", "--out", "b"),
        ExitCode.USAGE,
        "--all backs up every collection",
    ),
    Case(
        "backup naming a collection twice",
        ("backup", "users", "users", "--out", "b"),
        ExitCode.USAGE,
        "is named twice",
    ),
    Case(
        "new with both targets",
        ("new", "x", "--collection", "a", "--collection-group", "b"),
        ExitCode.USAGE,
        "not both",
    ),
    Case(
        "init over a file",
        ("init",),
        ExitCode.USAGE,
        "exists and is not a folder",
        {"migrations": "not a folder"},
    ),
    Case(
        "restore of a folder that is no backup", ("restore", "migrations"), ExitCode.DATA, "no manifest.json"
    ),
    Case("unknown option", ("run", "--nope"), ExitCode.USAGE, "No such option"),
    Case("unknown command", ("frobnicate",), ExitCode.USAGE, "No such command"),
    Case("option out of range", ("run", "--sample", "500"), ExitCode.USAGE, "Invalid value for '--sample'"),
    Case("missing option", ("backup", "users"), ExitCode.USAGE, "Missing option '--out'"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_error_path_ends_with_an_error_and_a_hint(
    case: Case, cli_env: dict[str, str], tmp_path: Path
) -> None:
    for name, text in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    done = docshift(tmp_path, {**cli_env, **case.env}, *case.args, timeout=60)
    assert done.returncode == case.code, done.stdout + done.stderr
    error, _ = error_and_hint(done)
    assert case.says in error, done.stderr


def test_an_in_filter_too_large_is_refused_before_anything_is_read_or_written(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Refused when the migration is loaded (exit 4), not when the query reaches the store mid-run
    (it used to stop the run as an emergency, exit 12, with a run folder and report behind)."""
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_a.py").write_text(
        'collection = "users"\nwhere = [("status", "in", list(range(31)))]\n' + GOOD.split("\n", 1)[1],
        encoding="utf-8",
    )
    done = docshift(tmp_path, cli_env, "run", "--execute")
    assert done.returncode == ExitCode.MIGRATION_FILE, done.stdout + done.stderr
    error, hint = error_and_hint(done)
    assert error.startswith("migrations/0001_a.py:2: where: filter status in has 31 values")
    assert "split the values" in hint
    assert not list(tmp_path.glob(".docshift/runs/*/report.json"))
