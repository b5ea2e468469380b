"""backend.base: the lease's subnet of one family, which every backend's configure() asks for."""

from __future__ import annotations

import ipaddress

import pytest

from pyflannel.backend.base import own_subnet
from pyflannel.errors import LeaseError
from pyflannel.lease import Lease, LeaseAttrs

V4 = ipaddress.IPv4Network("10.5.1.0/24")
V6 = ipaddress.IPv6Network("fd00:10:5:1::/64")


def test_subnet_of_each_family() -> None:
    dual = Lease(V4, LeaseAttrs(), ipv6_subnet=V6)
    assert (dual.subnet_of(4), dual.subnet_of(6)) == (V4, V6)
    assert own_subnet(dual, 4) == V4 and own_subnet(dual, 6) == V6


def test_missing_family_names_the_lease_and_the_fix() -> None:
    v4_only = Lease(V4, LeaseAttrs())
    assert v4_only.subnet_of(6) is None
    with pytest.raises(LeaseError) as err:
        own_subnet(v4_only, 6)
    assert "IPv6 is enabled but lease 10.5.1.0-24 has no IPv6 subnet" in err.value.message
    assert err.value.hint is not None and "delete the lease" in err.value.hint
