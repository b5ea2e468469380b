"""Netlink for pyflannel: batched per-peer operations, dumps, devices, addresses, events.

Modules (import the one you need; nothing is imported here so that importing a light module
does not pull in the others):

- ``ops``       the operation and entry types planners produce (plain data)
- ``nlsocket``  ``NetlinkSocket``: a raw rtnetlink socket (requests, dumps, ACKs)
- ``encode``    hand-written ``struct`` encoders for the per-peer messages
- ``executor``  ``apply_ops``/``NetlinkExecutor``: ordered, batched application with precise
                per-op failures
- ``dump``      routes / neighbours / FDB back as entries; ``route_get``
- ``links``     the vxlan device (create/ensure/compare), up, MTU, delete, look-ups
- ``addresses`` address list/add/delete/ensure
- ``subscription`` ``Subscription``: a non-blocking socket on multicast groups, drained by
                the monitors below
- ``monitor``   ``LinkMonitor`` for RTM_NEWLINK/RTM_DELLINK (trio or blocking)
- ``changes``   ``ChangeMonitor``: did anything peer programming depends on change?
- ``nsenter``   run code in a named network namespace (tests, benchmarks, lab)
"""
