"""A lab topology plus an etcd running in its etcd namespace, as one context manager.

``start_lab()`` yields a :class:`LabEnv`: ``env.topo`` is the
:class:`pyflannel.lab.topology.Topology`, ``env.etcd`` the :class:`EtcdServer` inside
``<prefix>-etcd`` (client URL ``http://198.51.100.250:2379``, reachable from every node namespace,
not from the root namespace), ``env.tls`` the TLS/auth details when ``etcd_tls=True``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pyflannel.lab.topology import LabNode, NodeRef, Topology
from tests.harness.etcd import EtcdServer, start_etcd
from tests.harness.etcd_tls import EtcdTLS, start_etcd_tls

__all__ = ["LabEnv", "new_prefix", "start_lab"]


def new_prefix() -> str:
    """A random lab prefix ("pf" + 6 hex digits): concurrent runs never share names."""
    return f"pf{secrets.token_hex(3)}"


@dataclass
class LabEnv:
    """A running lab: topology, its etcd (None when started without one) and TLS details."""

    topo: Topology
    etcd: EtcdServer | None
    tls: EtcdTLS | None = None

    @property
    def prefix(self) -> str:
        return self.topo.prefix

    @property
    def nodes(self) -> tuple[LabNode, ...]:
        return self.topo.nodes

    def node(self, ref: NodeRef) -> LabNode:
        return self.topo.node(ref)

    @property
    def etcd_endpoint(self) -> str:
        """The etcd client URL for daemons on the nodes."""
        if self.etcd is None:
            raise RuntimeError(f"lab {self.prefix} was started with etcd=False")
        return self.etcd.client_url


@contextlib.contextmanager
def start_lab(
    nodes: int = 3,
    *,
    prefix: str | None = None,
    ipv6: bool = False,
    underlay: str = "198.51.100.0/24",
    etcd: bool = True,
    enable_v2: bool = False,
    etcd_tls: bool = False,
    state_root: Path | None = None,
) -> Iterator[LabEnv]:
    """Build a lab (and start its etcd); everything with its prefix is removed afterwards, also
    when the block raises."""
    topo = Topology(
        prefix or new_prefix(), nodes, underlay=underlay, ipv6=ipv6, state_root=state_root
    )
    try:
        topo.up()
        if not etcd:
            yield LabEnv(topo, None)
            return
        assert topo.etcd_ns is not None and topo.etcd_ip is not None
        ns, host, data = topo.etcd_ns, str(topo.etcd_ip), topo.state_root / "etcd"
        if etcd_tls:
            with start_etcd_tls(enable_v2=enable_v2, netns=ns, host=host, data_root=data) as tls:
                yield LabEnv(topo, tls.server, tls)
        else:
            with start_etcd(enable_v2=enable_v2, netns=ns, host=host, data_root=data) as srv:
                yield LabEnv(topo, srv)
    finally:
        topo.down()
