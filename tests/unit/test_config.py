"""Configuration: flags > DOCSHIFT_* environment > docshift.toml / [tool.docshift] > defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from docshift.config import (
    KEYS,
    Config,
    EngineConfig,
    LimitsConfig,
    PricesConfig,
    StoreConfig,
    load_config,
    with_values,
)
from docshift.errors import ConfigError, ExitCode


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project folder with nothing in it (tmp_path's parents hold no docshift config)."""
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load(
    root: Path,
    env: dict[str, str] | None = None,
    flags: dict[str, Any] | None = None,
    config_file: Path | None = None,
) -> Config:
    return load_config(flags, env=env or {}, cwd=root, config_file=config_file)


def config_error(root: Path, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(root, **kwargs)
    assert caught.value.exit_code == ExitCode.USAGE
    return caught.value


# --------------------------------------------------------------------------- defaults and layers


def test_defaults_without_any_source(root: Path) -> None:
    config = load(root)
    assert config.store == StoreConfig()
    assert config.engine == EngineConfig()
    assert config.limits == LimitsConfig()
    assert config.config_file is None
    assert config.migrations_dir == root / "migrations"
    assert config.runs_dir == root / ".docshift/runs"
    assert set(config.sources) == {key.name for key in KEYS}
    assert set(config.sources.values()) == {"default"}


def test_every_key_is_declared_once_and_matches_a_dataclass_field() -> None:
    names = [key.name for key in KEYS]
    assert len(names) == len(set(names))
    fields = {
        "store": {f.name for f in dataclasses.fields(StoreConfig)},
        "engine": {f.name for f in dataclasses.fields(EngineConfig)},
        "limits": {f.name for f in dataclasses.fields(LimitsConfig)},
        "prices": {f.name for f in dataclasses.fields(PricesConfig)},
        "": {"migrations_dir", "runs_dir"},
    }
    for key in KEYS:
        assert key.name in fields[key.section], key
    declared = {(key.section, key.name) for key in KEYS}
    assert declared == {(section, name) for section, names in fields.items() for name in names}


def test_file_overrides_defaults(root: Path) -> None:
    write(root / "docshift.toml", 'batch_size = 100\nproject = "from-file"\nbackup = false\n')
    config = load(root)
    assert config.engine.batch_size == 100
    assert config.store.project == "from-file"
    assert config.engine.backup is False
    assert config.config_file == root / "docshift.toml"
    assert config.sources["batch_size"] == "docshift.toml"
    assert config.sources["concurrency"] == "default"


def test_environment_overrides_file(root: Path) -> None:
    write(root / "docshift.toml", 'batch_size = 100\nproject = "from-file"\nbackup = false\n')
    env = {"DOCSHIFT_BATCH_SIZE": "200", "DOCSHIFT_BACKUP": "yes", "DOCSHIFT_TIMEOUT_SECONDS": "2.5"}
    config = load(root, env=env)
    assert config.engine.batch_size == 200
    assert config.engine.backup is True
    assert config.store.timeout_seconds == 2.5
    assert config.store.project == "from-file"
    assert config.sources["batch_size"] == "DOCSHIFT_BATCH_SIZE"
    assert config.sources["project"] == "docshift.toml"


def test_flags_override_environment_and_file(root: Path) -> None:
    write(root / "docshift.toml", 'batch_size = 100\nproject = "from-file"\n')
    env = {"DOCSHIFT_BATCH_SIZE": "200", "DOCSHIFT_PROJECT": "from-env"}
    config = load(root, env=env, flags={"batch_size": 250, "project": "from-flag", "database": None})
    assert config.engine.batch_size == 250
    assert config.store.project == "from-flag"
    assert config.sources["batch_size"] == "--batch-size"
    assert config.sources["project"] == "--project"
    # A flag left unset (None) does not hide the lower layers.
    assert config.store.database == "(default)" and config.sources["database"] == "default"


def test_flags_given_as_text_are_converted(root: Path) -> None:
    config = load(root, flags={"batch_size": "123", "backup": "off", "max_writes_per_second": "50"})
    assert config.engine.batch_size == 123
    assert config.engine.backup is False
    assert config.limits.max_writes_per_second == 50.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_boolean_environment_values(root: Path, text: str, expected: bool) -> None:
    assert load(root, env={"DOCSHIFT_BACKUP": text}).engine.backup is expected


BOOLEAN_TEXTS = ["1", "true", "TRUE", "yes", "On", "0", "false", "no", "OFF"]


@pytest.mark.parametrize("text", BOOLEAN_TEXTS)
def test_assume_yes_is_read_like_a_boolean_key(root: Path, text: str) -> None:
    """One parse for DOCSHIFT_ASSUME_YES, the config's: every confirmation (run, rollback, restore,
    unlock) reads ``Config.assume_yes``, so they accept the same values."""
    expected = load(root, env={"DOCSHIFT_BACKUP": text}).engine.backup
    assert load(root, env={"DOCSHIFT_ASSUME_YES": text}).assume_yes is expected


def test_assume_yes_is_no_when_unset_or_empty(root: Path) -> None:
    assert load(root).assume_yes is False
    assert load(root, env={"DOCSHIFT_ASSUME_YES": ""}).assume_yes is False


@pytest.mark.parametrize("text", ["y", "t", "maybe", "2"])
def test_an_assume_yes_that_is_not_a_boolean_is_refused(root: Path, text: str) -> None:
    config_error(root, env={"DOCSHIFT_BACKUP": text})  # the same values as a boolean key refuses
    error = config_error(root, env={"DOCSHIFT_ASSUME_YES": text})
    assert error.message == f"DOCSHIFT_ASSUME_YES must be true or false, got {text!r}"
    assert error.hint is not None and "DOCSHIFT_ASSUME_YES=1" in error.hint


def test_other_docshift_variables_are_left_to_the_cli(root: Path) -> None:
    config = load(
        root,
        env={
            "DOCSHIFT_ASSUME_YES": "1",
            "DOCSHIFT_EMULATOR_JAR": "/x.jar",
            "DOCSHIFT_STATUS_TOKEN": "t",
            "OTHER": "x",
        },
    )
    assert set(config.sources.values()) == {"default"}


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("DOCSHIFT_BACTH_SIZE", "DOCSHIFT_BATCH_SIZE"),
        ("DOCSHIFT_MAX_WRITES_PER_SEC", "DOCSHIFT_MAX_WRITES_PER_SECOND"),
        ("DOCSHIFT_PROJET", "DOCSHIFT_PROJECT"),
        ("DOCSHIFT_ASSUME_YESS", "DOCSHIFT_ASSUME_YES"),
    ],
)
def test_a_misspelled_docshift_variable_is_refused_with_the_close_match(
    root: Path, name: str, meant: str
) -> None:
    """Silently ignored, a misspelled variable would leave its setting at the default."""
    error = config_error(root, env={name: "200"})
    assert error.message == f"unknown environment variable {name}"
    assert error.hint is not None and f"did you mean {meant}?" in error.hint


def test_an_unknown_docshift_variable_without_a_close_match_names_the_rule(root: Path) -> None:
    error = config_error(root, env={"DOCSHIFT_WHATEVER_ELSE_ENTIRELY": "1"})
    assert error.hint is not None and "did you mean" not in error.hint
    assert "DOCSHIFT_BATCH_SIZE" in error.hint and "DOCSHIFT_ASSUME_YES" in error.hint


# --------------------------------------------------------------------------- where the file is found


def test_pyproject_tool_docshift_section_is_used(root: Path) -> None:
    write(
        root / "pyproject.toml",
        '[project]\nname = "app"\n\n[tool.docshift]\nbatch_size = 50\nmin_batch_size = 10\nramp = "off"\n',
    )
    config = load(root)
    assert config.engine.batch_size == 50
    assert config.limits.ramp == "off"
    assert config.config_file == root / "pyproject.toml"
    assert config.sources["batch_size"] == "pyproject.toml"


def test_docshift_toml_wins_over_pyproject_in_the_same_folder(root: Path) -> None:
    write(root / "pyproject.toml", "[tool.docshift]\nbatch_size = 50\n")
    write(root / "docshift.toml", "batch_size = 60\n")
    config = load(root)
    assert config.engine.batch_size == 60
    assert config.config_file == root / "docshift.toml"


def test_a_pyproject_without_the_section_is_skipped(root: Path) -> None:
    write(root / "docshift.toml", "batch_size = 70\n")
    sub = root / "service"
    write(sub / "pyproject.toml", '[project]\nname = "service"\n')
    config = load(sub)
    assert config.engine.batch_size == 70
    assert config.config_file == root / "docshift.toml"


def test_nearest_file_is_found_from_a_subfolder_and_paths_are_relative_to_it(root: Path) -> None:
    write(root / "docshift.toml", 'migrations_dir = "db/migrations"\nruns_dir = "state"\n')
    deep = root / "a" / "b"
    deep.mkdir(parents=True)
    config = load(deep)
    assert config.config_file == root / "docshift.toml"
    assert config.migrations_dir == root / "db" / "migrations"
    assert config.runs_dir == root / "state"


def test_default_paths_are_relative_to_the_config_files_folder(root: Path) -> None:
    write(root / "docshift.toml", "batch_size = 100\n")
    deep = root / "sub"
    deep.mkdir()
    config = load(deep)
    assert config.migrations_dir == root / "migrations"
    assert config.runs_dir == root / ".docshift" / "runs"


def test_absolute_paths_in_the_file_are_kept(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write(root / "docshift.toml", f'migrations_dir = "{elsewhere.as_posix()}"\n')
    assert load(root).migrations_dir == elsewhere


def test_paths_from_environment_and_flags_are_relative_to_the_working_folder(root: Path) -> None:
    write(root / "docshift.toml", "batch_size = 100\n")
    cwd = root / "sub"
    cwd.mkdir()
    config = load(cwd, env={"DOCSHIFT_MIGRATIONS_DIR": "mine"}, flags={"runs_dir": "out"})
    assert config.migrations_dir == cwd / "mine"
    assert config.runs_dir == cwd / "out"
    assert config.sources["migrations_dir"] == "DOCSHIFT_MIGRATIONS_DIR"


def test_an_explicit_config_file_may_have_any_name(root: Path) -> None:
    custom = write(root / "conf" / "staging.toml", 'project = "staging"\nmigrations_dir = "m"\n')
    config = load(root, config_file=custom)
    assert config.store.project == "staging"
    assert config.config_file == custom
    assert config.migrations_dir == root / "conf" / "m"
    assert config.sources["project"] == "staging.toml"


def test_a_relative_explicit_config_file_is_relative_to_the_working_folder(root: Path) -> None:
    write(root / "conf" / "docshift.toml", 'project = "rel"\n')
    config = load(root, config_file=Path("conf/docshift.toml"))
    assert config.store.project == "rel"
    assert config.migrations_dir == root / "conf" / "migrations"


def test_an_explicit_pyproject_uses_its_tool_docshift_section(root: Path) -> None:
    pyproject = write(root / "x" / "pyproject.toml", "[tool.other]\na = 1\n[tool.docshift]\nshards = 3\n")
    assert load(root, config_file=pyproject).engine.shards == 3


def test_an_explicit_config_file_that_does_not_exist_is_an_error(root: Path) -> None:
    error = config_error(root, config_file=root / "missing.toml")
    assert "missing.toml" in error.message and "does not exist" in error.message


# --------------------------------------------------------------------------- FIRESTORE_EMULATOR_HOST


def test_firestore_emulator_host_is_the_fallback_for_emulator_host(root: Path) -> None:
    config = load(root, env={"FIRESTORE_EMULATOR_HOST": "localhost:8123"})
    assert config.store.emulator_host == "localhost:8123"
    assert config.sources["emulator_host"] == "FIRESTORE_EMULATOR_HOST"


def test_emulator_host_from_file_env_or_flag_beats_firestore_emulator_host(root: Path) -> None:
    env = {"FIRESTORE_EMULATOR_HOST": "fallback:1"}
    write(root / "docshift.toml", 'emulator_host = "file:2"\n')
    assert load(root, env=env).store.emulator_host == "file:2"
    env["DOCSHIFT_EMULATOR_HOST"] = "env:3"
    assert load(root, env=env).store.emulator_host == "env:3"
    config = load(root, env=env, flags={"emulator_host": "flag:4"})
    assert config.store.emulator_host == "flag:4"
    assert config.sources["emulator_host"] == "--emulator-host"


def test_an_empty_firestore_emulator_host_is_ignored(root: Path) -> None:
    config = load(root, env={"FIRESTORE_EMULATOR_HOST": ""})
    assert config.store.emulator_host is None


# --------------------------------------------------------------------------- errors


def test_unknown_key_in_the_file_names_the_key_and_the_file(root: Path) -> None:
    path = write(root / "docshift.toml", "batch_size = 10\nbatchsize = 20\n")
    error = config_error(root)
    assert "'batchsize'" in error.message
    assert str(path) in error.message
    assert error.hint is not None and "batch_size" in error.hint


def test_unknown_key_in_pyproject_section_is_an_error(root: Path) -> None:
    write(root / "pyproject.toml", "[tool.docshift]\nshard = 2\n")
    error = config_error(root)
    assert "'shard'" in error.message and "pyproject.toml" in error.message


def test_a_nested_table_is_an_unknown_key(root: Path) -> None:
    write(root / "docshift.toml", "[engine]\nbatch_size = 10\n")
    assert "'engine'" in config_error(root).message


def test_unknown_flag_is_an_error(root: Path) -> None:
    assert "'colour'" in config_error(root, flags={"colour": "red"}).message


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ('batch_size = "ten"', "batch_size", "whole number"),
        ("batch_size = 1.5", "batch_size", "whole number"),
        ("batch_size = true", "batch_size", "whole number"),
        ('timeout_seconds = "fast"', "timeout_seconds", "must be a number"),
        ("timeout_seconds = false", "timeout_seconds", "must be a number"),
        ('backup = "yes"', "backup", "true or false"),
        ("backup = 1", "backup", "true or false"),
        ("project = 5", "project", "non-empty string"),
        ('database = ""', "database", "non-empty string"),
        ("migrations_dir = 5", "migrations_dir", "must be a path"),
        ('migrations_dir = ""', "migrations_dir", "must be a path"),
        ("max_failures = true", "max_failures", ""),
        ('max_failures = "lots"', "max_failures", "count"),
        ('ramp = "sometimes"', "ramp", "auto, on, off"),
        ('state_prefix = "has/slash"', "state_prefix", "collection id"),
        ("breaker_failure_rate = 1.5", "breaker_failure_rate", "fraction"),
        ("integrity_warning = 101", "integrity_warning", "percentage"),
    ],
)
def test_wrong_types_and_values_in_the_file_name_the_key_and_the_file(
    root: Path, line: str, key: str, reason: str
) -> None:
    path = write(root / "docshift.toml", line + "\n")
    error = config_error(root)
    assert f"'{key}'" in error.message
    assert path.name in error.message
    assert reason in error.message
    assert error.hint is not None and error.hint.startswith(f"{key}:")


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("batch_size", -1, "greater than 0"),
        ("batch_size", 0, "greater than 0"),
        ("min_batch_size", -5, "greater than 0"),
        ("concurrency", -1, "must not be negative"),
        ("max_concurrency", 0, "greater than 0"),
        ("shards", -2, "greater than 0"),
        ("checkpoint_every_docs", -1, "greater than 0"),
        ("memory_soft_limit_mb", -1, "greater than 0"),
        ("conflict_retries", -1, "must not be negative"),
        ("max_writes_per_second", -0.5, "must not be negative"),
        ("timeout_seconds", 0, "greater than 0"),
        ("checkpoint_every_seconds", -1.0, "greater than 0"),
    ],
)
def test_negative_or_zero_sizes_are_refused_from_every_layer(
    root: Path, key: str, value: float, reason: str
) -> None:
    write(root / "docshift.toml", f"{key} = {value}\n")
    assert reason in config_error(root).message
    (root / "docshift.toml").unlink()
    env_name = f"DOCSHIFT_{key.upper()}"
    error = config_error(root, env={env_name: str(value)})
    assert f"'{key}'" in error.message and env_name in error.message and reason in error.message
    error = config_error(root, flags={key: value})
    assert f"--{key.replace('_', '-')}" in error.message and reason in error.message


def test_conflict_retries_may_be_zero(root: Path) -> None:
    assert load(root, env={"DOCSHIFT_CONFLICT_RETRIES": "0"}).engine.conflict_retries == 0


@pytest.mark.parametrize("text", ["abc", "", "1.5", "1e3", "ten"])
def test_bad_whole_numbers_from_the_environment_name_the_variable(root: Path, text: str) -> None:
    error = config_error(root, env={"DOCSHIFT_BATCH_SIZE": text})
    assert "'batch_size'" in error.message
    assert "DOCSHIFT_BATCH_SIZE" in error.message
    assert "whole number" in error.message


def test_bad_boolean_from_the_environment(root: Path) -> None:
    error = config_error(root, env={"DOCSHIFT_BACKUP": "maybe"})
    assert "DOCSHIFT_BACKUP" in error.message and "true or false" in error.message


@pytest.mark.parametrize("value", ["1%", "0.5%", "100", 100, 0])
def test_max_failures_accepts_a_count_or_a_percentage(root: Path, value: Any) -> None:
    text = f'"{value}"' if isinstance(value, str) else str(value)
    write(root / "docshift.toml", f"max_failures = {text}\n")
    assert load(root).engine.max_failures == str(value)


@pytest.mark.parametrize("value", ["150%", "100.5%", "1000%"])
def test_max_failures_above_100_percent_is_refused(root: Path, value: str) -> None:
    error = config_error(root, flags={"max_failures": value})
    assert "max_failures" in error.message and "--max-failures" in error.message
    assert "above 100%" in error.message and error.hint
    assert load(root, flags={"max_failures": "100%"}).engine.max_failures == "100%"


def test_max_batch_size_is_at_most_what_one_request_may_carry(root: Path) -> None:
    error = config_error(root, env={"DOCSHIFT_MAX_BATCH_SIZE": "501"})
    assert "max_batch_size" in error.message and "DOCSHIFT_MAX_BATCH_SIZE" in error.message
    assert "at most 500" in error.message and error.hint
    write(root / "docshift.toml", "max_batch_size = 800\n")
    assert "at most 500" in config_error(root).message
    (root / "docshift.toml").unlink()
    assert load(root, env={"DOCSHIFT_MAX_BATCH_SIZE": "500"}).engine.max_batch_size == 500


def test_batch_size_outside_its_bounds_says_where_it_came_from(root: Path) -> None:
    error = config_error(root, env={"DOCSHIFT_BATCH_SIZE": "600"})
    assert "batch_size 600" in error.message and "DOCSHIFT_BATCH_SIZE" in error.message
    assert error.hint is not None and "at most 500" in error.hint
    write(root / "docshift.toml", "min_batch_size = 400\n")
    error = config_error(root)
    assert "min_batch_size 400" in error.message and "docshift.toml" in error.message


def test_memory_limits_must_be_ordered_and_the_error_says_where_they_came_from(root: Path) -> None:
    write(root / "docshift.toml", "memory_soft_limit_mb = 2048\n")
    error = config_error(root)
    assert "memory_soft_limit_mb" in error.message and "memory_hard_limit_mb" in error.message
    assert "docshift.toml" in error.message


def test_integrity_thresholds_must_be_ordered(root: Path) -> None:
    error = config_error(root, env={"DOCSHIFT_INTEGRITY_CRITICAL": "99"})
    assert "integrity_critical" in error.message and "DOCSHIFT_INTEGRITY_CRITICAL" in error.message


def test_bad_toml_is_a_clear_error_naming_the_file(root: Path) -> None:
    path = write(root / "docshift.toml", "batch_size = = 3\n")
    error = config_error(root)
    assert str(path) in error.message and "not valid TOML" in error.message


def test_bad_toml_in_pyproject_is_an_error_too(root: Path) -> None:
    write(root / "pyproject.toml", "[tool.docshift\nbatch_size = 3\n")
    assert "not valid TOML" in config_error(root).message


def test_a_file_that_is_not_utf8_is_a_clear_error(root: Path) -> None:
    (root / "docshift.toml").write_bytes(b'project = "\xff\xfe"\n')
    assert "not valid TOML" in config_error(root).message


def test_a_config_path_that_is_a_folder_is_an_error(root: Path) -> None:
    (root / "docshift.toml").mkdir()
    error = config_error(root, config_file=root / "docshift.toml")
    assert "does not exist" in error.message


# --------------------------------------------------------------------------- frozen results


def test_resolved_config_is_frozen(root: Path) -> None:
    config = load(root, env={"DOCSHIFT_PROJECT": "p"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.migrations_dir = Path("x")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.store.project = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.engine.batch_size = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.ramp = "on"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.sources["project"] = "tampered"  # type: ignore[index]
    assert config.store.project == "p" and config.sources["project"] == "DOCSHIFT_PROJECT"


def test_with_values_and_with_engine_return_changed_copies(root: Path) -> None:
    config = load(root)
    changed = with_values(config, {"project": "p2"}, "run R").with_engine(batch_size=42)
    assert changed.store.project == "p2" and changed.engine.batch_size == 42
    assert changed.sources["project"] == "run R" and changed.sources["batch_size"] == "default"
    assert config.store.project is None and config.engine.batch_size == 300
    assert changed.limits == config.limits
