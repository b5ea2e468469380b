"""etcd v3 storage of leases and the network config (flanneld's ``pkg/subnet/etcd``).

- :mod:`.client`: typed adapter over pyetcd, the only module importing pyetcd/grpc;
- :mod:`.errors`: gRPC status codes → :mod:`pyflannel.errors`;
- :mod:`.endpoints`: ``--etcd-endpoints`` / ``--etcd-prefix`` parsing;
- :mod:`.session`: TLS, authentication and token renewal, failover, worker threads;
- :mod:`.registry`: leases, config and watches (:class:`EtcdRegistry`), with
  :mod:`.leases` (decoding, write outcomes), :mod:`.listing` (paged listing and its
  caches), :mod:`.create` (the create transaction), :mod:`.expiry` (TTL cache) and
  :mod:`.watch` (watch streams).

Importing this package does not import grpc; :mod:`.registry` does.
"""
