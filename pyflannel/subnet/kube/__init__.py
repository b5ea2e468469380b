"""flanneld's Kubernetes subnet manager (``--kube-subnet-mgr``).

The lease is the Node's ``spec.podCIDR(s)``; this node's backend data is published as Node
annotations (``<prefix>backend-data`` …, through ``nodes/<n>/status``); peers are found by listing
and watching Nodes. The package feeds the same typed messages
(:mod:`pyflannel.peer_messages`) as the etcd manager, so no backend knows which manager runs.

Modules: :mod:`.connection` (kubeconfig / in-cluster config), :mod:`.client` (the API calls, on
httpx), :mod:`.node` (the Node fields used), :mod:`.annotations` (flanneld's keys and values),
:mod:`.watch` (Node events → peer messages, pure), :mod:`.manager` (the ``SubnetManager``),
:mod:`.inspect` (what ``status``/``doctor`` show). Only kube mode imports this package: httpx is
never loaded in etcd mode.
"""
