"""The settings every node of a cluster must share, and how two nodes' differ.

Nodes that share one Redis share the guard's failure counts, blocks and lockouts
and the sending counters, but each compares them with its own config: a node with
``guard.lockout_threshold = 20`` beside nodes with 10 locks an account only at
20, a node with ``limits.messages_per_hour = 0`` lets an account send without a
limit, one with ``policy.sender_ownership = "off"`` lets it send as anyone. The
balancer picks the node, so a client gets, now and then, the laxest node's rules,
and an attacker who retries gets them every time. Nothing refuses such a node
(a rolling change passes through it on purpose); each node's heartbeat carries
these settings, the node logs a warning naming the keys that differ from another
live node's, and ``smtpgate cluster status`` lists them (docs/scale-out.md).

Left out: what is a node's own by design (``guard.database``, the connection
caps and timeouts of ``[limits]``, which size a node's capacity).
"""

from __future__ import annotations

from typing import Any

from smtpgate.config import Config

#: ``[limits]`` keys whose counters the nodes share in Redis.
_SHARED_LIMITS = ("messages_per_hour", "recipients_per_hour")


def shared_settings(cfg: Config) -> dict[str, Any]:
    """``section.key`` to its value (as JSON has it) for every setting the nodes
    must agree on."""
    found: dict[str, Any] = {}
    for key, value in cfg.guard.model_dump(mode="json", exclude={"database"}).items():
        found[f"guard.{key}"] = value
    for key, value in cfg.policy.model_dump(mode="json").items():
        found[f"policy.{key}"] = value
    limits = cfg.limits.model_dump(mode="json", include=set(_SHARED_LIMITS))
    for key in _SHARED_LIMITS:
        found[f"limits.{key}"] = limits[key]
    return found


def differences(by_node: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The keys on which the nodes' settings differ, each with every node's value
    (a node without the key, an older version, is left out of that key)."""
    keys = sorted({key for settings in by_node.values() for key in settings})
    found: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = {node: settings[key] for node, settings in by_node.items() if key in settings}
        if len({_text(v) for v in values.values()}) > 1:
            found[key] = values
    return found


def describe(key: str, values: dict[str, Any]) -> str:
    """``guard.lockout_threshold: a 10, b 20``."""
    return f"{key}: " + ", ".join(f"{node} {_text(v)}" for node, v in sorted(values.items()))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
