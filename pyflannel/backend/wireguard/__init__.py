"""The wireguard backend (flanneld's ``wireguard``), split by concept:

* :mod:`.keys` — Curve25519 keys and the private-key file (flanneld's place and format);
* :mod:`.options` — the ``Backend`` options and their defaults;
* :mod:`.uapi` — the cross-platform UAPI text protocol and its unix-socket client;
* :mod:`.genl` — generic-netlink messages of the kernel ``wireguard`` family;
* :mod:`.device` — creating the device (kernel module, else ``wireguard-go``) and talking to it;
* :mod:`.peers` — pure planning: wanted leases → peer configs → UAPI changes;
* :mod:`.network` — the backend and the live network (supervision, reconcile);
* :mod:`.inspect` — per-peer handshake age and transfer counters for status/doctor/metrics.
"""
