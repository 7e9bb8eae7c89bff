"""State shared by CLI commands: the global flags, and the config resolved from them once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from docshift.config import Config, load_config

__all__ = ["AppContext", "pass_app"]


@dataclass
class AppContext:
    flags: dict[str, Any]
    config_file: Path | None = None
    debug: bool = False
    _config: Config | None = field(default=None, repr=False)

    def config(self, **command_flags: Any) -> Config:
        """Resolve the config once, with the command's own flags over the global ones."""
        if self._config is None or command_flags:
            merged = {**self.flags, **{k: v for k, v in command_flags.items() if v is not None}}
            resolved = load_config(merged, config_file=self.config_file)
            if command_flags:
                return resolved
            self._config = resolved
        return self._config


pass_app = click.make_pass_decorator(AppContext)
