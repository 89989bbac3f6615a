"""``smtpgate cluster status``: the nodes sharing this config's Redis
(``[state] backend = "redis"``), from the heartbeats they wrote in the last minute
(`server/heartbeat.py`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import redis

from smtpgate.cli.common import OperationalError, config_option, get_config, iso_time
from smtpgate.plural import count
from smtpgate.server.heartbeat import EVERY, nodes
from smtpgate.server.shared_settings import describe, differences
from smtpgate.server.status_file import proxy_note

#: A heartbeat older than this is late: three missed beats. The node died (``kill
#: -9``, power) or cannot reach Redis; one that stops says so by removing its own.
LATE = 3 * EVERY


@click.group()
def cluster() -> None:
    """Nodes that share one Redis (docs/scale-out.md)."""


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node, per line.")
@config_option
def cluster_status(as_json: bool, config_path: Path | None) -> None:
    """Nodes seen in the last minute: version, listeners, sessions, queue."""
    cfg = get_config(config_path)
    if cfg.state.backend != "redis":
        raise OperationalError("[state] backend is not 'redis': this node is on its own",
                               "docs/scale-out.md shows how nodes share one Redis")
    try:
        found = nodes(cfg)
    except (redis.RedisError, OSError) as e:
        raise OperationalError(f"cannot read the heartbeats from Redis: {e}",
                               "check [state] redis_url and password_file") from None
    now = time.time()
    if as_json:
        for doc in found:
            # Times as in every command's JSON: ISO 8601 with the zone (docs/cli.md).
            updated = doc.get("updated")
            shown = ({**doc, "updated": iso_time(updated), "late": now - updated > LATE}
                     if isinstance(updated, int | float) else doc)
            click.echo(json.dumps(shown, sort_keys=True))
        return
    if not found:
        click.echo("no node has written a heartbeat in the last minute")
        return
    for doc in found:
        listeners = ", ".join(
            f"{lst['name']} {lst['address']}"
            + (f" ({proxy_note(lst).removeprefix(', ')})" if proxy_note(lst) else "")
            for lst in doc["listeners"])
        age = now - doc["updated"]
        late = (f" (late: heartbeats come every {EVERY:.0f} s; the node died or cannot "
                f"reach Redis)" if age > LATE else "")
        click.echo(f"{doc['node']}: smtpgate {doc['version']}, pid {doc['pid']}, "
                   f"seen {age:.0f} s ago{late}, {count(doc['sessions'], 'session')}, "
                   f"{_queue(doc.get('queue'))}; {listeners}")
    differ = differences({doc["node"]: doc["shared"] for doc in found
                          if isinstance(doc.get("shared"), dict)})
    if differ:
        click.echo("settings that differ between the nodes (each applies its own to the "
                   "state they share: give every node the same; docs/scale-out.md):")
        for key, values in differ.items():
            click.echo("  " + describe(key, values))


def _queue(size: object) -> str:
    """The heartbeat's queue count; an older node wrote -1 for a spool it could not read."""
    if isinstance(size, int) and size >= 0:
        return f"queue {size}"
    return "queue unknown (the node cannot read its spool)"


COMMANDS = [cluster]
