"""Configuration, resolved once: flags > ``DOCSHIFT_*`` environment > ``docshift.toml`` (or
``[tool.docshift]`` in pyproject.toml) > defaults, into frozen dataclasses.

Only this module reads the environment. Every key is declared once in ``KEYS`` with its type, default,
bounds and help text; the README's table and the error messages come from the same declaration.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from docshift.errors import ConfigError

__all__ = [
    "ASSUME_YES",
    "KEYS",
    "MAX_WRITES_PER_REQUEST",
    "Config",
    "EngineConfig",
    "Key",
    "LimitsConfig",
    "PricesConfig",
    "StoreConfig",
    "load_config",
    "with_values",
]


MAX_WRITES_PER_REQUEST = 500
"""Writes in one BatchWrite, as Cloud Firestore documents it (the emulator took 40,000 in one request:
only its bytes bound it); docshift never sends more, so what works on the emulator works on Firestore.
The bound of ``max_batch_size``, and the split of the Firestore adapter's requests
(``docshift.store.semantics`` lists it with Firestore's other limits)."""


@dataclass(frozen=True)
class StoreConfig:
    project: str | None = None
    database: str = "(default)"
    emulator_host: str | None = None
    state_prefix: str = "_docshift"
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 3.0


AUTO_CONCURRENCY = 4
"""Commits in flight that keep a run busy when the store is near (the emulator on the same
machine, measured): where an automatic figure starts, and the least it goes down to unless a
write limit needs fewer (:class:`~docshift.engine.limits.CommitWindow`)."""


@dataclass(frozen=True)
class EngineConfig:
    batch_size: int = 300
    min_batch_size: int = 20
    max_batch_size: int = 500
    concurrency: int = 0
    """Commits in flight: a fixed figure; 0 (auto): decided from the commit latency observed,
    between :data:`AUTO_CONCURRENCY` and ``max_concurrency``."""
    max_concurrency: int = 16
    shards: int = 1
    conflict_retries: int = 5
    write_mode: str = "auto"
    checkpoint_every_docs: int = 5000
    checkpoint_every_seconds: float = 10.0
    max_failures: str = "1%"
    backup: bool = True

    @property
    def base_concurrency(self) -> int:
        """Commits in flight before anything was measured: the fixed figure, or the automatic one's start."""
        return self.concurrency or AUTO_CONCURRENCY

    @property
    def most_concurrency(self) -> int:
        """The most commits in flight: the fixed figure, or the automatic one's cap."""
        return self.concurrency or max(self.max_concurrency, AUTO_CONCURRENCY)


@dataclass(frozen=True)
class LimitsConfig:
    max_writes_per_second: float = 0.0
    ramp: str = "auto"
    adaptive_rate: bool = True
    commit_latency_target_ms: float = 2000.0
    memory_soft_limit_mb: int = 512
    memory_hard_limit_mb: int = 1024
    breaker_failure_rate: float = 0.10
    breaker_window: int = 200
    breaker_consecutive_failures: int = 5
    integrity_warning: float = 95.0
    integrity_critical: float = 90.0
    stage_max_failure_rate: float = 0.01
    stage_max_p95_ms: float = 10_000.0


@dataclass(frozen=True)
class PricesConfig:
    """What an estimate prices operations at, per 100,000 (``docshift run --estimate``). The
    defaults are Cloud Firestore's Standard-edition list prices for us-central1 (Iowa, regional)
    in USD, recorded 2026-12-02 (docs/estimate.md); multi-region nam5 and eur3 cost twice that."""

    price_reads_per_100k: float = 0.03
    price_writes_per_100k: float = 0.09
    price_deletes_per_100k: float = 0.01
    price_currency: str = "USD"


@dataclass(frozen=True)
class Config:
    store: StoreConfig = field(default_factory=StoreConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    prices: PricesConfig = field(default_factory=PricesConfig)
    migrations_dir: Path = Path("migrations")
    runs_dir: Path = Path(".docshift/runs")
    config_file: Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    """Where each key's value came from: default, the file's name, DOCSHIFT_X, or --flag."""
    assume_yes: bool = False
    """``DOCSHIFT_ASSUME_YES``: confirmations are answered yes (the CLI's ``--yes``, for CI)."""

    def with_engine(self, **changes: Any) -> Config:
        return dataclasses.replace(self, engine=dataclasses.replace(self.engine, **changes))


@dataclass(frozen=True)
class Key:
    name: str
    section: str
    kind: type
    help: str
    check: Callable[[Any], str | None] | None = None
    optional: bool = False


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"


def _fraction(value: Any) -> str | None:
    return None if 0 < value <= 1 else "must be a fraction in (0, 1]"


def _percent(value: Any) -> str | None:
    return None if 0 <= value <= 100 else "must be a percentage between 0 and 100"


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    return lambda value: None if value in allowed else f"must be one of {', '.join(allowed)}"


def _failures(value: Any) -> str | None:
    text = str(value)
    if not re.fullmatch(r"\d+(\.\d+)?%|\d+", text):
        return "must be a count (e.g. 100) or a percentage (e.g. 0.5%)"
    if text.endswith("%") and float(text[:-1]) > 100:
        return "is a percentage above 100% (100% tolerates every document failing)"
    return None


def _one_request(value: Any) -> str | None:
    if value > MAX_WRITES_PER_REQUEST:
        return f"must be at most {MAX_WRITES_PER_REQUEST}, the writes one Firestore request may carry"
    return _positive(value)


def _characters_outside(text: str, allowed: str) -> str:
    """The characters of ``text`` that are not in the regex class ``allowed``, for a message."""
    found = sorted({char for char in text if not re.fullmatch(f"[{allowed}]", char)})
    upper = [char for char in found if char.isupper()]
    named = ["spaces" if char == " " else repr(char) for char in found if not char.isupper()]
    if upper:
        named.append("upper-case letters")
    return ", ".join(named)


def _project_id(value: Any) -> str | None:
    # What Cloud Firestore and the emulator both take: lowercase letters, digits and hyphens, not
    # first, after an optional domain (example.com:my-project). Anything else the emulator answers
    # with a bare UNKNOWN, and Cloud Firestore with NOT_FOUND.
    text = str(value)
    if not text or re.fullmatch(r"([a-z0-9][a-z0-9.-]*:)?[a-z0-9][a-z0-9-]*", text):
        return None
    outside = _characters_outside(text.rsplit(":", 1)[-1], "a-z0-9-")
    found = f" (found {outside})" if outside else ""
    return f"is not a project id: lowercase letters, digits and hyphens, not starting with a hyphen{found}"


def _database_id(value: Any) -> str | None:
    text = str(value)
    if text == "(default)" or re.fullmatch(r"[a-z0-9][a-z0-9-]*", text):
        return None
    outside = _characters_outside(text, "a-z0-9-")
    found = f" (found {outside})" if outside else ""
    return f"is not a database id: (default), or lowercase letters, digits and hyphens{found}"


def _host_port(value: Any) -> str | None:
    text = str(value)
    if not text:
        return None
    if "://" in text:
        return "must be host:port without a scheme (e.g. 127.0.0.1:8080, not http://...)"
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})", text)
    if match is None:
        return "must be host:port, e.g. 127.0.0.1:8080"
    if not 1 <= int(match[2]) <= 65535:
        return "has a port outside 1-65535"
    return None


def _currency(value: Any) -> str | None:
    ok = re.fullmatch(r"[A-Z]{3}", str(value))
    return None if ok else "must be a three-letter currency code in capitals, e.g. USD or EUR"


def _identifier(value: Any) -> str | None:
    ok = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]*", str(value))
    return None if ok else "must be a collection id: letters, digits, _ and -"


KEYS: tuple[Key, ...] = (
    Key(
        "project",
        "store",
        str,
        "Google Cloud project id (`gcloud projects list` shows yours; on the emulator any, e.g. demo-test)",
        _project_id,
        optional=True,
    ),
    Key(
        "database",
        "store",
        str,
        "Firestore database id, (default) or e.g. reporting; each database has its own history",
        _database_id,
    ),
    Key(
        "emulator_host",
        "store",
        str,
        "host:port of a Firestore emulator (also read from FIRESTORE_EMULATOR_HOST)",
        _host_port,
        optional=True,
    ),
    Key("state_prefix", "store", str, "collection holding docshift's history and lock", _identifier),
    Key("timeout_seconds", "store", float, "deadline for one store request", _positive),
    Key(
        "connect_timeout_seconds",
        "store",
        float,
        "how long a command waits to reach the store before it fails (an unreachable host fails at once)",
        _positive,
    ),
    Key("migrations_dir", "", Path, "folder of migration files"),
    Key("runs_dir", "", Path, "folder for run state: checkpoints, before-images, reports"),
    Key("batch_size", "engine", int, "documents per commit to start with", _positive),
    Key("min_batch_size", "engine", int, "smallest adaptive batch", _positive),
    Key("max_batch_size", "engine", int, "largest adaptive batch (at most 500: one request)", _one_request),
    Key(
        "concurrency",
        "engine",
        int,
        "commits in flight at once, a fixed figure; 0 (the default) = auto: 4 while the store is near, "
        "more as the commit latency asks (Little's law), up to max_concurrency",
        _not_negative,
    ),
    Key(
        "max_concurrency",
        "engine",
        int,
        "most commits in flight with concurrency = 0 (auto), however far the store is",
        _positive,
    ),
    Key("shards", "engine", int, "key ranges read concurrently", _positive),
    Key("conflict_retries", "engine", int, "re-reads of a document changed during the run", _not_negative),
    Key(
        "write_mode",
        "engine",
        str,
        "how changed documents are written: auto (full guarded set for "
        "small documents, masked update of the changed fields for large ones), update, set",
        _choice("auto", "update", "set"),
    ),
    Key("checkpoint_every_docs", "engine", int, "checkpoint after this many documents", _positive),
    Key("checkpoint_every_seconds", "engine", float, "checkpoint at least this often", _positive),
    Key(
        "max_failures",
        "engine",
        str,
        "failed documents tolerated: a count (e.g. 100) or a percentage from 0% to 100% (e.g. 0.5%)",
        _failures,
    ),
    Key("backup", "engine", bool, "save before-images of every changed document"),
    Key("max_writes_per_second", "limits", float, "write-rate cap in ops/s; 0 = no cap", _not_negative),
    Key(
        "ramp",
        "limits",
        str,
        "500/50/5 ramp-up: auto (on for Cloud Firestore, off for the emulator), on, off",
        _choice("auto", "on", "off"),
    ),
    Key(
        "adaptive_rate",
        "limits",
        bool,
        "lower the write rate when the store refuses writes for load (RESOURCE_EXHAUSTED, ABORTED, "
        "UNAVAILABLE) and raise it again while it accepts them",
    ),
    Key(
        "commit_latency_target_ms",
        "limits",
        float,
        "commit latency (ms) the batch size aims at: smaller batches when commits take longer; 0 = no target",
        _not_negative,
    ),
    Key(
        "memory_soft_limit_mb",
        "limits",
        int,
        "RSS above which reading pauses; documents held at once are bounded in bytes by the room below it",
        _positive,
    ),
    Key("memory_hard_limit_mb", "limits", int, "RSS at which the run checkpoints and stops", _positive),
    Key("breaker_failure_rate", "limits", float, "failure rate over the window that stops a run", _fraction),
    Key("breaker_window", "limits", int, "documents in the circuit breaker's window", _positive),
    Key("breaker_consecutive_failures", "limits", int, "failed commits in a row that stop a run", _positive),
    Key("integrity_warning", "limits", float, "integrity score (%) below which a warning is given", _percent),
    Key("integrity_critical", "limits", float, "integrity score (%) below which a run stops", _percent),
    Key(
        "stage_max_failure_rate",
        "limits",
        float,
        "canary stages: failed documents (fraction) a stage may have and pass its gate",
        _fraction,
    ),
    Key(
        "stage_max_p95_ms",
        "limits",
        float,
        "canary stages: commit latency p95 (ms) above which a "
        "stage stops and everything is rolled back; 0 = no limit",
        _not_negative,
    ),
    Key(
        "price_reads_per_100k",
        "prices",
        float,
        "what an estimate prices 100,000 document reads at (default: us-central1 list price, USD)",
        _not_negative,
    ),
    Key(
        "price_writes_per_100k",
        "prices",
        float,
        "what an estimate prices 100,000 document writes at (default: us-central1 list price, USD)",
        _not_negative,
    ),
    Key(
        "price_deletes_per_100k",
        "prices",
        float,
        "what an estimate prices 100,000 document deletes at (default: us-central1 list price, USD)",
        _not_negative,
    ),
    Key("price_currency", "prices", str, "the currency of the three prices, e.g. USD", _currency),
)
_BY_NAME = {key.name: key for key in KEYS}
ASSUME_YES = "DOCSHIFT_ASSUME_YES"
OTHER_VARIABLES = (ASSUME_YES, "DOCSHIFT_EMULATOR_JAR", "DOCSHIFT_STATUS_TOKEN")
"""``DOCSHIFT_*`` variables that are not config keys: the confirmation (resolved here, into
``Config.assume_yes``), the CLI's status token and the emulator harness's jar. Any other
``DOCSHIFT_*`` variable is refused (a misspelled key)."""
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(raw: Any, from_text: bool) -> bool:
    """``True``/``False``, or from text (the environment, a flag) 1/true/yes/on and 0/false/no/off."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).lower()
    if from_text and text in _TRUE + _FALSE:
        return text in _TRUE
    raise ValueError("must be true or false")


def _whole(raw: Any, from_text: bool) -> int:
    if isinstance(raw, bool) or not (isinstance(raw, int) or from_text):
        raise ValueError("must be a whole number")
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _number(raw: Any, from_text: bool) -> float:
    if isinstance(raw, bool) or not (isinstance(raw, int | float) or from_text):
        raise ValueError("must be a number")
    try:
        return float(raw)
    except ValueError:
        raise ValueError("must be a number") from None


def _path(raw: Any, from_text: bool) -> Path:
    if not isinstance(raw, str | Path) or not str(raw):
        raise ValueError("must be a path")
    return Path(raw)


_PARSERS: dict[type, Callable[[Any, bool], Any]] = {bool: _boolean, int: _whole, float: _number, Path: _path}
"""Each kind's parser: the value (``from_text``: given as text, by the environment or a flag), or a
ValueError saying what the value must be. Strings are checked by :func:`_text`."""


def _text(key: Key, raw: Any) -> str:
    if key.check is _failures and isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)  # `max_failures = 100` in TOML is a count
    if not isinstance(raw, str) or (not raw and not key.optional):
        raise ValueError("must be a non-empty string")
    return raw


def _convert(key: Key, raw: Any, origin: str, from_text: bool) -> Any:
    parse = _PARSERS.get(key.kind)
    try:
        value = parse(raw, from_text) if parse is not None else _text(key, raw)
        problem = key.check(value) if key.check is not None else None
    except ValueError as refused:  # a value of the wrong kind
        problem = str(refused)
    if problem:
        raise ConfigError(
            f"config key {key.name!r} from {origin} {problem}, got {raw!r}",
            hint=f"{key.name}: {key.help}",
        )
    return value


def _assume_yes(env: Mapping[str, str]) -> bool:
    """``DOCSHIFT_ASSUME_YES``, read like a boolean key from the environment (unset or empty: no)."""
    raw = env.get(ASSUME_YES, "")
    try:
        return bool(raw) and _boolean(raw, from_text=True)
    except ValueError:
        raise ConfigError(
            f"{ASSUME_YES} must be true or false, got {raw!r}",
            hint=f"set {ASSUME_YES}=1 to confirm from CI, or unset it to be asked",
        ) from None


def find_config_file(start: Path) -> tuple[Path | None, dict[str, Any]]:
    """The nearest docshift.toml, or pyproject.toml with [tool.docshift], from ``start`` upward."""
    for folder in (start, *start.parents):
        candidate = folder / "docshift.toml"
        if candidate.is_file():
            return candidate, _read_toml(candidate)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            section = _read_toml(pyproject).get("tool", {}).get("docshift")
            if isinstance(section, dict):
                return pyproject, section
    return None, {}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", hint="fix the file's syntax") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror}",
            hint="check the file's permissions, or pass another --config",
        ) from None


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    config_file: Path | None = None,
) -> Config:
    """Resolve every key from its sources; unknown keys and bad values raise :class:`ConfigError`."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    if config_file is not None:
        config_file = cwd / config_file  # a relative --config is relative to the working folder
        if not config_file.is_file():
            raise ConfigError(
                f"config file {config_file} does not exist",
                hint="check the --config path (relative to the working folder), or drop --config to use "
                "the nearest docshift.toml; `docshift init` creates one",
            )
        data = _read_toml(config_file)
        if config_file.name == "pyproject.toml":
            data = data.get("tool", {}).get("docshift", {})
        path: Path | None = config_file
    else:
        path, data = find_config_file(cwd)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    base = path.parent if path else cwd
    if path is not None:
        for name, raw in data.items():
            key = _BY_NAME.get(name)
            if key is None:
                known = ", ".join(sorted(_BY_NAME))
                raise ConfigError(f"unknown config key {name!r} in {path}", hint=f"known keys: {known}")
            values[name] = _convert(key, raw, str(path.name), from_text=False)
            sources[name] = path.name
    emulator_env = env.get("FIRESTORE_EMULATOR_HOST")
    if emulator_env and "emulator_host" not in values:
        key = _BY_NAME["emulator_host"]
        values["emulator_host"] = _convert(key, emulator_env, "FIRESTORE_EMULATOR_HOST", from_text=True)
        sources["emulator_host"] = "FIRESTORE_EMULATOR_HOST"
    for env_name, raw in env.items():
        if not env_name.startswith("DOCSHIFT_"):
            continue
        name = env_name[len("DOCSHIFT_") :].lower()
        key = _BY_NAME.get(name)
        if key is None:
            if env_name in OTHER_VARIABLES:
                continue  # read by the CLI and the emulator harness
            raise _unknown_variable(env_name)
        values[name] = _relative_to(cwd, _convert(key, raw, env_name, from_text=True))
        sources[name] = env_name
    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        key = _BY_NAME.get(name)
        if key is None:
            raise ConfigError(f"unknown setting {name!r}", hint=f"known keys: {', '.join(sorted(_BY_NAME))}")
        converted = _convert(key, raw, f"--{name.replace('_', '-')}", from_text=isinstance(raw, str))
        values[name] = _relative_to(cwd, converted)
        sources[name] = f"--{name.replace('_', '-')}"
    return _build(values, sources, base, path, assume_yes=_assume_yes(env))


def _unknown_variable(env_name: str) -> ConfigError:
    """A ``DOCSHIFT_*`` variable docshift does not know: most likely a misspelled key."""
    known = [key.name.upper() for key in KEYS] + [name[len("DOCSHIFT_") :] for name in OTHER_VARIABLES]
    close = difflib.get_close_matches(env_name[len("DOCSHIFT_") :], known, n=1, cutoff=0.6)
    hint = (
        f"did you mean DOCSHIFT_{close[0]}? Rename it, or unset {env_name}"
        if close
        else "unset it: docshift reads DOCSHIFT_ and a config key in capitals (e.g. "
        "DOCSHIFT_BATCH_SIZE; the keys are in the README's Configuration table), and "
        f"{', '.join(OTHER_VARIABLES)}"
    )
    return ConfigError(f"unknown environment variable {env_name}", hint=hint)


def _relative_to(cwd: Path, value: Any) -> Any:
    """Paths from the environment or flags are relative to the working folder, not the config file's."""
    return cwd / value if isinstance(value, Path) else value


def _build(
    values: dict[str, Any], sources: dict[str, str], base: Path, path: Path | None, *, assume_yes: bool
) -> Config:
    sections: dict[str, dict[str, Any]] = {"store": {}, "engine": {}, "limits": {}, "prices": {}, "": {}}
    for name, value in values.items():
        sections[_BY_NAME[name].section][name] = value
    top = sections[""]
    config = Config(
        store=StoreConfig(**sections["store"]),
        engine=EngineConfig(**sections["engine"]),
        limits=LimitsConfig(**sections["limits"]),
        prices=PricesConfig(**sections["prices"]),
        migrations_dir=base / top.get("migrations_dir", Path("migrations")),
        runs_dir=base / top.get("runs_dir", Path(".docshift/runs")),
        config_file=path,
        sources=MappingProxyType({key.name: sources.get(key.name, "default") for key in KEYS}),
        assume_yes=assume_yes,
    )
    engine, limits = config.engine, config.limits

    def origins(*names: str) -> str:
        return "; ".join(f"{name} from {config.sources[name]}" for name in names)

    if not engine.min_batch_size <= engine.batch_size <= engine.max_batch_size:
        raise ConfigError(
            f"batch_size {engine.batch_size} must lie between min_batch_size {engine.min_batch_size} "
            f"and max_batch_size {engine.max_batch_size} "
            f"({origins('batch_size', 'min_batch_size', 'max_batch_size')})",
            hint="max_batch_size is at most 500 (one request); set the three so that min <= batch <= max",
        )
    if limits.memory_soft_limit_mb >= limits.memory_hard_limit_mb:
        raise ConfigError(
            f"memory_soft_limit_mb {limits.memory_soft_limit_mb} must be below memory_hard_limit_mb "
            f"{limits.memory_hard_limit_mb} ({origins('memory_soft_limit_mb', 'memory_hard_limit_mb')})",
            hint="lower memory_soft_limit_mb or raise memory_hard_limit_mb: reading pauses at the soft "
            "limit, the run stops at the hard one",
        )
    if limits.integrity_critical > limits.integrity_warning:
        raise ConfigError(
            f"integrity_critical {limits.integrity_critical} must not be above integrity_warning "
            f"{limits.integrity_warning} ({origins('integrity_critical', 'integrity_warning')})",
            hint="lower integrity_critical or raise integrity_warning: a score below the warning is "
            "reported, one below the critical threshold stops the run",
        )
    return config


def with_values(config: Config, values: Mapping[str, Any], origin: str) -> Config:
    """``config`` with the keys in ``values`` taken from ``origin`` (e.g. ``run RUN_ID``, the run a
    resume continues), converted and cross-checked like the value of any other source."""
    current: dict[str, Any] = {}
    for key in KEYS:
        holder: Any = config if not key.section else getattr(config, key.section)
        current[key.name] = getattr(holder, key.name)
    sources = dict(config.sources)
    for name, raw in values.items():
        known = _BY_NAME.get(name)
        if known is None:
            raise ConfigError(
                f"unknown setting {name!r} from {origin}",
                hint="the run was recorded by a newer docshift: resume it with that release, or start a "
                "new run",
            )
        current[name] = _convert(known, raw, origin, from_text=False)
        sources[name] = origin
    return _build(current, sources, Path(), config.config_file, assume_yes=config.assume_yes)
