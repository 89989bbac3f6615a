"""Placeholder: commands land here (`COMMANDS` lists what main.py registers)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
