"""Kernel entries the way ``ip``/``bridge`` print them, and the command that fixes each."""

from __future__ import annotations

from collections.abc import Mapping

from pyflannel.netlink.ops import Entry, NeighEntry, RouteEntry

__all__ = ["Entry", "describe_entry", "entry_kind", "fix_command"]


def _name(ifindex: int, names: Mapping[int, str]) -> str:
    return names.get(ifindex, f"if{ifindex}")


def entry_kind(entry: Entry) -> str:
    """``route``, ``neighbour`` or ``FDB entry``."""
    if isinstance(entry, RouteEntry):
        return "route"
    return "neighbour" if isinstance(entry, NeighEntry) else "FDB entry"


def describe_entry(entry: Entry, names: Mapping[int, str]) -> str:
    """A kernel entry the way ``ip``/``bridge`` print it."""
    if isinstance(entry, RouteEntry):
        text = f"route {entry.dst}"
        if entry.gw is not None:
            text += f" via {entry.gw}"
        if entry.ifindex:
            text += f" dev {_name(entry.ifindex, names)}"
        return text + (" onlink" if entry.onlink else "")
    if isinstance(entry, NeighEntry):
        return f"neighbour {entry.ip} lladdr {entry.mac} dev {_name(entry.ifindex, names)}"
    return f"FDB {entry.mac} dst {entry.dst} dev {_name(entry.ifindex, names)}"


def fix_command(entry: Entry, names: Mapping[int, str], *, delete: bool) -> str:
    """The ``ip``/``bridge`` command that adds (replaces) or deletes ``entry``."""
    if isinstance(entry, RouteEntry):
        verb = "del" if delete else "replace"
        six = "-6 " if entry.dst.version == 6 else ""
        text = f"ip {six}route {verb} {entry.dst}"
        if entry.gw is not None:
            text += f" via {entry.gw}"
        if entry.ifindex:
            text += f" dev {_name(entry.ifindex, names)}"
        return text + (" onlink" if entry.onlink and not delete else "")
    dev = _name(entry.ifindex, names)
    if isinstance(entry, NeighEntry):
        if delete:
            return f"ip neigh del {entry.ip} dev {dev}"
        return f"ip neigh replace {entry.ip} lladdr {entry.mac} dev {dev} nud permanent"
    if delete:
        return f"bridge fdb del {entry.mac} dev {dev} dst {entry.dst} self"
    return f"bridge fdb replace {entry.mac} dev {dev} dst {entry.dst} self permanent"
