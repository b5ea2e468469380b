"""The namespaced lab used by the tests, bench/ and the ``pyflannel lab`` command.

:mod:`pyflannel.lab.netns` runs things inside network namespaces (create, delete, exec, ping,
HTTP probe); :mod:`pyflannel.lab.topology` builds the switch / etcd host / node hosts / pods.
Standard library only, driving the ``ip`` binary.
"""

from __future__ import annotations

from pyflannel.lab.netns import CommandFailed, http_request, ping, run_in
from pyflannel.lab.topology import LabNode, LabPod, Topology, cleanup_prefix

__all__ = [
    "CommandFailed",
    "LabNode",
    "LabPod",
    "Topology",
    "cleanup_prefix",
    "http_request",
    "ping",
    "run_in",
]
