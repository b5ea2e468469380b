"""EtcdRegistry against a real etcd: keys, values, TTLs, reservations, errors, TLS/auth,
failover and the cost of listing many leases."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import time
from base64 import b64decode
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from pyflannel.errors import ConfigError, EtcdAuthError, EtcdUnavailable, FlannelError
from pyflannel.lease import EventKind, LeaseAttrs, encode_attrs
from pyflannel.subnet.etcd.endpoints import EndpointSpec, parse_endpoints
from pyflannel.subnet.etcd.errors import ConfigNotFound, WatchCompacted
from pyflannel.subnet.etcd.registry import EtcdRegistry
from tests.harness.etcd import EtcdServer, free_port, start_etcd
from tests.harness.etcd_cluster import EtcdCluster
from tests.harness.etcd_tls import EtcdTLS

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network
ME = LeaseAttrs(
    public_ip=ipaddress.IPv4Address("198.51.100.10"),
    backend_type="vxlan",
    backend_data={"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:0a"},
)
DOC_VALUE = (
    '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
    '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
)


def new_prefix() -> str:
    return f"/pf{secrets.token_hex(3)}/network"


def kv(srv: EtcdServer, key: str) -> dict[str, Any] | None:
    """The raw key-value as etcd holds it: value bytes and lease id (0 = none)."""
    out = json.loads(srv.etcdctl("get", key, "-w", "json").stdout)
    kvs = out.get("kvs") or []
    if not kvs:
        return None
    item = kvs[0]
    return {
        "value": b64decode(item["value"]),
        "lease": int(item.get("lease", 0)),
        "mod_revision": int(item["mod_revision"]),
    }


def grant(srv: EtcdServer, ttl: int) -> str:
    out = srv.etcdctl("lease", "grant", str(ttl)).stdout
    m = re.search(r"lease ([0-9a-f]+) granted", out)
    assert m, out
    return m.group(1)


def lease_ids(srv: EtcdServer) -> set[int]:
    out = srv.etcdctl("lease", "list").stdout
    return {int(x, 16) for x in re.findall(r"^([0-9a-f]+)$", out, re.M)}


# --------------------------------------------------------------------------- endpoints (pure)


def test_parse_endpoints() -> None:
    eps = parse_endpoints("http://127.0.0.1:4001, https://etcd.example:2379,10.0.0.1,[::1]:23")
    assert eps == [
        EndpointSpec("http://127.0.0.1:4001", "http", "127.0.0.1", 4001),
        EndpointSpec("https://etcd.example:2379", "https", "etcd.example", 2379),
        EndpointSpec("http://10.0.0.1:2379", "http", "10.0.0.1", 2379),
        EndpointSpec("http://[::1]:23", "http", "[::1]", 23),
    ]
    assert parse_endpoints(["http://a:1,http://b:2", "http://c:3"])[2].host == "c"


@pytest.mark.parametrize(
    "bad", ["", " , ", "unix:///run/etcd.sock", "http://h:notaport", "ftp://h:1"]
)
def test_parse_endpoints_rejects(bad: str) -> None:
    with pytest.raises(ConfigError, match="--etcd-endpoints"):
        parse_endpoints(bad)


# --------------------------------------------------------------------------- config


async def test_missing_config_says_what_flanneld_says(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        with pytest.raises(ConfigNotFound) as info:
            await reg.get_config()
    msg = str(info.value)
    assert (
        "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
        in msg
    )
    assert f"ETCDCTL_API=3 etcdctl put {prefix}/config '" in msg
    assert etcd.endpoint in msg


async def test_get_config_returns_raw_text(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    raw = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'
    etcd.put(f"{prefix}/config", raw)
    # flanneld joins prefix and "config" with path.Join: a trailing slash is cleaned away.
    async with EtcdRegistry(etcd.endpoint, prefix + "/") as reg:
        assert await reg.get_config() == raw


# --------------------------------------------------------------------------- leases


async def test_create_lease_writes_flanneld_bytes_with_a_ttl(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        before = time.time()
        res = await reg.create_lease(V4("10.5.7.0/24"), None, ME, 120)
    assert res.ok and res.lease is not None
    key = f"{prefix}/subnets/10.5.7.0-24"
    stored = kv(etcd, key)
    assert stored is not None
    assert stored["value"] == encode_attrs(ME).encode()
    assert stored["lease"] == res.lease.etcd_lease_id != 0
    assert stored["mod_revision"] == res.lease.mod_revision
    assert res.lease.expiration is not None
    assert before + 115 <= res.lease.expiration <= time.time() + 121
    ttl = etcd.etcdctl("lease", "timetolive", f"{res.lease.etcd_lease_id:x}").stdout
    assert "granted with TTL(120s)" in ttl


async def test_create_on_taken_key_fails_and_revokes_the_grant(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    other = LeaseAttrs(public_ip=ipaddress.IPv4Address("198.51.100.99"))
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        first = await reg.create_lease(V4("10.5.7.0/24"), None, other, 60)
        assert first.lease is not None
        second = await reg.create_lease(V4("10.5.7.0/24"), None, ME, 60)
    assert not second.ok
    assert second.existing is not None and second.existing.attrs == other
    assert lease_ids(etcd) == {first.lease.etcd_lease_id}, "the losing grant must be revoked"
    stored = kv(etcd, f"{prefix}/subnets/10.5.7.0-24")
    assert stored is not None and stored["value"] == encode_attrs(other).encode()


async def test_dual_stack_key(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        res = await reg.create_lease(V4("10.42.1.0/24"), V6("2001:cafe:42:1::/64"), ME, 60)
        assert res.ok
        leases, _ = await reg.list_leases()
    assert kv(etcd, f"{prefix}/subnets/10.42.1.0-24&2001:cafe:42:1::-64") is not None
    assert [(x.subnet, x.ipv6_subnet) for x in leases] == [
        (V4("10.42.1.0/24"), V6("2001:cafe:42:1::/64"))
    ]


async def test_reservation_is_put_without_a_lease(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        res = await reg.put_lease(V4("10.5.9.0/24"), None, ME, None)
        assert res.lease is not None and res.lease.is_reservation
        assert res.lease.expiration is None
    stored = kv(etcd, f"{prefix}/subnets/10.5.9.0-24")
    assert stored is not None and stored["lease"] == 0
    assert stored["value"] == encode_attrs(ME).encode()


async def test_conditional_put_and_delete(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    sn = V4("10.5.3.0/24")
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        created = await reg.create_lease(sn, None, ME, 60)
        assert created.lease is not None
        rev = created.lease.mod_revision
        renewed = await reg.put_lease(sn, None, ME, 60, if_mod_revision=rev)
        assert renewed.lease is not None
        assert renewed.lease.etcd_lease_id != created.lease.etcd_lease_id
        stale = await reg.put_lease(sn, None, ME, 60, if_mod_revision=rev)
        assert not stale.ok and stale.existing is not None
        assert stale.existing.mod_revision == renewed.lease.mod_revision
        assert not await reg.delete_lease(sn, None, if_mod_revision=rev)
        assert kv(etcd, f"{prefix}/subnets/10.5.3.0-24") is not None
        assert await reg.delete_lease(sn, None, if_mod_revision=renewed.lease.mod_revision)
        assert not await reg.delete_lease(sn, None)
    assert kv(etcd, f"{prefix}/subnets/10.5.3.0-24") is None


async def test_list_reads_flanneld_values_reservations_and_skips_garbage(
    etcd: EtcdServer,
) -> None:
    prefix = new_prefix()
    lid = grant(etcd, 300)
    etcd.etcdctl("put", f"--lease={lid}", f"{prefix}/subnets/10.5.52.0-24", DOC_VALUE)
    etcd.put(f"{prefix}/subnets/10.5.53.0-24", DOC_VALUE.replace("64.3", "64.4"))  # reservation
    etcd.put(f"{prefix}/subnets/10.5.54.0-24", "{not json")
    etcd.put(f"{prefix}/subnets/not-a-subnet", DOC_VALUE)
    big = '{"PublicIP":"1.2.3.4","X":"' + "y" * 1_048_576 + '"}'  # valid JSON, 1 MiB
    etcd.etcdctl("put", f"{prefix}/subnets/10.5.55.0-24", input=big)
    etcd.put(f"{prefix}/config", "{}")  # outside subnets/: not a lease
    with capture_logs() as logs:
        async with EtcdRegistry(etcd.endpoint, prefix) as reg:
            leases, revision = await reg.list_leases()
    assert revision > 0
    by_subnet = {x.subnet: x for x in leases}
    assert set(by_subnet) == {V4("10.5.52.0/24"), V4("10.5.53.0/24")}
    normal = by_subnet[V4("10.5.52.0/24")]
    assert normal.etcd_lease_id == int(lid, 16)
    assert normal.expiration is not None and 290 < normal.expiration - time.time() <= 301
    assert normal.attrs.backend_data == {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}
    reservation = by_subnet[V4("10.5.53.0/24")]
    assert reservation.is_reservation and reservation.expiration is None
    warned = {str(e.get("key")) for e in logs if e["log_level"] == "warning"}
    assert {
        f"{prefix}/subnets/10.5.54.0-24",
        f"{prefix}/subnets/not-a-subnet",
        f"{prefix}/subnets/10.5.55.0-24",
    } <= warned


async def test_get_lease(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        missing, rev0 = await reg.get_lease(V4("10.5.1.0/24"), None)
        assert missing is None and rev0 > 0
        res = await reg.create_lease(V4("10.5.1.0/24"), None, ME, 60)
        got, rev1 = await reg.get_lease(V4("10.5.1.0/24"), None)
    assert got is not None and res.lease is not None
    assert got.attrs == ME and got.etcd_lease_id == res.lease.etcd_lease_id
    assert rev1 >= got.mod_revision > rev0


# --------------------------------------------------------------------------- watch primitive


async def test_watch_delivers_changes_in_order_then_reports_compaction(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        _, rev = await reg.list_leases()
        kinds: list[tuple[EventKind, str]] = []
        async with reg.watch_leases(rev + 1) as stream:
            await reg.create_lease(V4("10.5.1.0/24"), None, ME, 60)
            await reg.put_lease(V4("10.5.2.0/24"), None, ME, None)
            await reg.delete_lease(V4("10.5.1.0/24"), None)
            etcd.put(f"{prefix}/subnets/bogus", "x")  # skipped, but advances the resume point
            with trio.fail_after(10):
                last = 0
                async for batch in stream:
                    kinds += [(e.kind, str(e.lease.subnet)) for e in batch.events]
                    last = batch.resume_revision
                    if last > rev + 4:
                        break
        assert kinds == [
            (EventKind.ADDED, "10.5.1.0/24"),
            (EventKind.ADDED, "10.5.2.0/24"),
            (EventKind.REMOVED, "10.5.1.0/24"),
        ]
        etcd.etcdctl("compact", str(last - 1))
        with pytest.raises(WatchCompacted), trio.fail_after(10):
            async with reg.watch_leases(rev + 1) as stream:
                async for _ in stream:
                    pass


# --------------------------------------------------------------------------- errors


async def test_unreachable_etcd_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    reg = EtcdRegistry(url, "/coreos.com/network", request_timeout=2)
    with trio.fail_after(15), pytest.raises(EtcdUnavailable) as info:
        await reg.get_config()
    reg.close()
    msg = str(info.value)
    assert url in msg and "get /coreos.com/network/config" in msg
    assert "check that etcd is running" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_failover_skips_a_dead_endpoint(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdRegistry([dead, etcd.endpoint], prefix, request_timeout=3) as reg:
        for i in range(1, 6):
            res = await reg.create_lease(V4(f"10.5.{i}.0/24"), None, ME, 60)
            assert res.ok
        leases, _ = await reg.list_leases()
    assert len(leases) == 5


async def test_cluster_member_in_use_killed(etcd_cluster: EtcdCluster) -> None:
    prefix = new_prefix()
    async with EtcdRegistry(etcd_cluster.endpoints, prefix, request_timeout=3) as reg:
        assert (await reg.create_lease(V4("10.5.1.0/24"), None, ME, 60)).ok
        client = reg.session.client
        assert client is not None
        in_use = client.endpoint_in_use
        victim = next(m for m in etcd_cluster if m.client_url.endswith(in_use))
        await trio.to_thread.run_sync(victim.kill)
        with trio.fail_after(20):
            while True:
                try:
                    assert (await reg.create_lease(V4("10.5.2.0/24"), None, ME, 60)).ok
                    break
                except EtcdUnavailable:
                    await trio.sleep(0.2)  # a leader election after killing the leader
            leases, _ = await reg.list_leases()
    assert {x.subnet for x in leases} == {V4("10.5.1.0/24"), V4("10.5.2.0/24")}


# --------------------------------------------------------------------------- TLS and auth


async def test_tls_client_cert_and_auth(etcd_tls: EtcdTLS) -> None:
    t = etcd_tls
    async with EtcdRegistry(
        t.endpoint,
        t.prefix,
        keyfile=str(t.key_file),
        certfile=str(t.cert_file),
        cafile=str(t.ca_file),
        username=t.user,
        password=t.password,
    ) as reg:
        res = await reg.create_lease(V4("10.5.1.0/24"), None, ME, 60)
        assert res.ok
        leases, _ = await reg.list_leases()
    assert [x.subnet for x in leases] == [V4("10.5.1.0/24")]


async def _expect_error(reg: EtcdRegistry) -> FlannelError:
    try:
        with trio.fail_after(30):
            await reg.list_leases()
    except FlannelError as exc:
        return exc
    finally:
        reg.close()
    raise AssertionError("no error")


async def test_tls_wrong_ca_is_a_clear_error(etcd_tls: EtcdTLS) -> None:
    t = etcd_tls
    reg = EtcdRegistry(
        t.endpoint,
        t.prefix,
        keyfile=str(t.key_file),
        certfile=str(t.cert_file),
        cafile=str(t.wrong_ca_file),
        username=t.user,
        password=t.password,
        request_timeout=3,
    )
    err = await _expect_error(reg)
    assert isinstance(err, EtcdAuthError), err
    assert "TLS" in str(err) and "--etcd-cafile" in str(err) and t.endpoint in str(err)


async def test_tls_wrong_password_is_a_clear_error(etcd_tls: EtcdTLS) -> None:
    t = etcd_tls
    reg = EtcdRegistry(
        t.endpoint,
        t.prefix,
        keyfile=str(t.key_file),
        certfile=str(t.cert_file),
        cafile=str(t.ca_file),
        username=t.user,
        password="wrong",
    )
    err = await _expect_error(reg)
    assert isinstance(err, EtcdAuthError), err
    assert "--etcd-password" in str(err) and "authentication failed" in str(err)


async def test_auth_required_but_no_user_is_a_clear_error(etcd_tls: EtcdTLS) -> None:
    t = etcd_tls
    reg = EtcdRegistry(
        t.endpoint,
        t.prefix,
        keyfile=str(t.key_file),
        certfile=str(t.cert_file),
        cafile=str(t.ca_file),
    )
    err = await _expect_error(reg)
    assert isinstance(err, EtcdAuthError), err
    assert "--etcd-username" in str(err)


async def test_no_client_cert_for_https_etcd_is_a_clear_error(etcd_tls: EtcdTLS) -> None:
    t = etcd_tls
    reg = EtcdRegistry(
        t.endpoint,
        t.prefix,
        cafile=str(t.ca_file),
        username=t.user,
        password=t.password,
        request_timeout=3,
    )
    err = await _expect_error(reg)
    assert isinstance(err, EtcdAuthError), err
    assert t.endpoint in str(err) and "--etcd-certfile" in str(err)


async def test_client_cert_from_another_ca_is_a_clear_error(etcd_tls: EtcdTLS) -> None:
    t = etcd_tls
    reg = EtcdRegistry(
        t.endpoint,
        t.prefix,
        keyfile=str(t.wrong_key_file),
        certfile=str(t.wrong_cert_file),
        cafile=str(t.ca_file),
        username=t.user,
        password=t.password,
        request_timeout=3,
    )
    err = await _expect_error(reg)
    assert isinstance(err, EtcdAuthError), err
    assert "TLS" in str(err) and "--etcd-certfile" in str(err)


async def test_unreadable_key_file_is_a_config_error() -> None:
    reg = EtcdRegistry("https://127.0.0.1:1", keyfile="/nonexistent/key.pem", certfile="/x")
    err = await _expect_error(reg)
    assert isinstance(err, ConfigError)
    assert "--etcd-keyfile" in str(err) and "/nonexistent/key.pem" in str(err)


async def test_expired_auth_token_is_renewed() -> None:
    with start_etcd(["--auth-token-ttl=1"]) as srv:
        srv.etcdctl("user", "add", "root:rootpw", "--interactive=false")
        srv.etcdctl("user", "grant-role", "root", "root")
        srv.etcdctl("auth", "enable")
        srv.auth = ("root", "rootpw")
        prefix = new_prefix()
        async with EtcdRegistry(srv.endpoint, prefix, username="root", password="rootpw") as reg:
            assert (await reg.create_lease(V4("10.5.1.0/24"), None, ME, 60)).ok
            await trio.sleep(2.5)  # the simple token expires after 1 s of idleness
            with capture_logs() as logs:
                assert (await reg.create_lease(V4("10.5.2.0/24"), None, ME, 60)).ok
            assert any(e["event"] == "etcd.auth_token_renewed" for e in logs)
            # Watches opened after a renewal use the new token too.
            _, rev = await reg.list_leases()
            await trio.sleep(2.5)
            async with reg.watch_leases(rev + 1) as stream:
                await reg.delete_lease(V4("10.5.1.0/24"), None)
                with trio.fail_after(10):
                    batch = await stream.__anext__()
            assert [e.kind for e in batch.events] == [EventKind.REMOVED]


# --------------------------------------------------------------------------- scale


def _bulk_create(srv: EtcdServer, prefix: str, n: int) -> None:
    """n keys, each with its own etcd lease (as n flanneld nodes would make), via gRPC futures."""
    import pyetcd
    from pyetcd import etcdrpc

    host, port = srv.client_url.split("//")[1].rsplit(":", 1)
    client = pyetcd.MultiEndpointEtcd3Client(
        [pyetcd.Endpoint(host, int(port), secure=False)], timeout=30, failover=True
    )
    try:
        base = int(ipaddress.IPv4Address("10.0.1.0"))
        for start in range(0, n, 1000):
            idx = range(start, min(n, start + 1000))
            grants = [
                client.leasestub.LeaseGrant.future(etcdrpc.LeaseGrantRequest(TTL=3600), 30)
                for _ in idx
            ]
            ids = [g.result().ID for g in grants]
            puts = []
            for i, lid in zip(idx, ids, strict=True):
                sn = V4((base + i * 256, 24))
                attrs = LeaseAttrs(
                    public_ip=ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + i),
                    backend_type="vxlan",
                    backend_data={
                        "VNI": 1,
                        "VtepMAC": f"aa:bb:cc:{i >> 16:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
                    },
                )
                key = f"{prefix}/subnets/{sn.network_address}-24"
                req = etcdrpc.PutRequest(
                    key=key.encode(), value=encode_attrs(attrs).encode(), lease=lid
                )
                puts.append(client.kvstub.Put.future(req, 30))
            for p in puts:
                p.result()
    finally:
        client.close()


@pytest.mark.slow
async def test_listing_10k_leases_is_fast(etcd: EtcdServer) -> None:
    prefix = new_prefix()
    n = 10_000
    await trio.to_thread.run_sync(_bulk_create, etcd, prefix, n)
    async with EtcdRegistry(etcd.endpoint, prefix, request_timeout=30) as reg:
        t0 = time.perf_counter()
        leases, _ = await reg.list_leases(with_ttl=False)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        cold, _ = await reg.list_leases()
        t_cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm, _ = await reg.list_leases()
        t_warm = time.perf_counter() - t0
    assert len(leases) == len(cold) == len(warm) == n
    assert all(x.expiration is not None for x in cold)
    print(
        f"\nlist {n} leases: no TTL {t_plain:.2f}s, TTL cold {t_cold:.2f}s, "
        f"TTL cached {t_warm:.2f}s"
    )
    # Sequential TimeToLive calls run at ~1,700/s on an idle 2-core box (~6 s for 10k);
    # batched gRPC futures reach ~5,000/s and the per-lease-ID cache skips them on re-lists.
    # The bounds are loose because CI boxes are shared; the printed numbers are the measurement.
    assert t_cold < 20.0
    assert t_warm < t_cold


async def test_a_relist_reuses_unchanged_leases_and_parses_changed_ones(etcd: EtcdServer) -> None:
    # The listing cache: an unchanged key-value is not parsed again (the same Lease object);
    # a changed value (new mod_revision) is.
    prefix = new_prefix()
    value = '{"PublicIP":"198.51.100.%d","BackendType":"host-gw"}'
    for i in (1, 2):
        etcd.put(f"{prefix}/subnets/10.5.{i}.0-24", value % i)
    async with EtcdRegistry(etcd.endpoint, prefix) as reg:
        first, _ = await reg.list_leases(with_ttl=False)
        etcd.put(f"{prefix}/subnets/10.5.2.0-24", value % 9)
        second, _ = await reg.list_leases(with_ttl=False)
    by_subnet = {str(le.subnet): le for le in first}
    again = {str(le.subnet): le for le in second}
    assert again["10.5.1.0/24"] is by_subnet["10.5.1.0/24"]
    assert again["10.5.2.0/24"] is not by_subnet["10.5.2.0/24"]
    assert str(again["10.5.2.0/24"].attrs.public_ip) == "198.51.100.9"
