"""The confirmation gate before anything destructive against a real (non-emulator) project."""

from __future__ import annotations

import sys

import click

from docshift.config import Config
from docshift.errors import ConfirmationRequired

__all__ = ["confirm_destructive"]


def confirm_destructive(config: Config, action: str, yes: bool) -> None:
    """Ask before ``action`` touches Cloud Firestore; the emulator needs no confirmation.

    ``--yes`` or ``DOCSHIFT_ASSUME_YES=1`` (``Config.assume_yes``) answer for CI; without a terminal
    and without them the answer is no, with its own exit code.
    """
    if config.store.emulator_host:
        return
    if yes or config.assume_yes:
        return
    where = f"project {config.store.project or '(from credentials)'}, database {config.store.database}"
    if not sys.stdin.isatty():
        raise ConfirmationRequired(
            f"refusing to {action} on Cloud Firestore ({where}) without confirmation",
            hint="pass --yes (or set DOCSHIFT_ASSUME_YES=1) to confirm from CI",
        )
    click.echo(f"This will {action} on Cloud Firestore: {where}.", err=True)
    if not click.confirm("Continue?", default=False, err=True):
        raise ConfirmationRequired(
            "not confirmed; nothing was changed", hint="answer y to go ahead, or pass --yes"
        )
