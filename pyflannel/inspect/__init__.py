"""The inspection layer behind ``pyflannel status`` and ``pyflannel doctor``.

It judges this node with the daemon's own knowledge, never a copy of it: device names, MTU
overheads and plan contexts come from the backends (``device_name()``, ``flannel_mtu()``,
``plan_context()``), the kernel view and DirectRouting decisions from
:mod:`pyflannel.backend.kernel`, the peer verdicts from the planner, the rule diff from the
traffic manager (``differences()``). The CLI modules only gather options and render.

- :mod:`.findings`: the ``Finding`` value and its rendering;
- :mod:`.leases`: the lease table and which lease is this node's;
- :mod:`.host`: this host's links and addresses, sockets and offloads, read once;
- :mod:`.sources`: the network config, subnet.env and their agreement with the lease;
- :mod:`.entries`: kernel entries as ``ip``/``bridge`` print them and the commands fixing them;
- :mod:`.datapath`: devices and peers per backend (vxlan, host-gw, udp);
- :mod:`.wireguard`: WireGuard peers (handshake age, peers no lease explains);
- :mod:`.rules`: the masquerade/forward rules;
- :mod:`.checks`: doctor's host checks (br_netfilter, etcd, interface, MTU, port, offload).
"""
