"""CLI commands of the service (serve, db, jobs, losses, worker)."""

from __future__ import annotations


def add_commands(sub) -> None:
    """Register the service's subcommands on the ``ml3`` parser."""
