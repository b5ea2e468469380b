"""The Kubernetes API calls flannel makes, on httpx (trio through anyio; docs/decisions.md).

GET a Node or a Pod, list + watch Nodes, strategic-merge PATCH of ``nodes/<n>/status``, and a
generic ``create`` (tests and the deployment dry run). Every failure becomes a
:class:`~pyflannel.errors.KubeApiError` whose message names the request and what to do;
``410 Gone`` (a watch or list from an expired resourceVersion) is
:class:`~pyflannel.errors.KubeWatchExpired`.
"""

from __future__ import annotations

import json
import os
import random
import ssl
import tempfile
from collections.abc import AsyncIterator, Generator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from pyflannel import __version__
from pyflannel.errors import KubeApiError, KubeWatchExpired
from pyflannel.subnet.kube.connection import KubeConnection
from pyflannel.subnet.kube.node import Node, parse_node
from pyflannel.subnet.kube.watch import NodeEvent

__all__ = ["KubeClient", "NodeList"]

REQUEST_TIMEOUT = 10.0
# The server ends a watch after timeoutSeconds (client-go picks 5-10 min at random so that many
# clients do not re-list together); our read timeout is a little longer.
WATCH_MIN_SECONDS = 300
USER_AGENT = f"pyflanneld/{__version__}"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


class NodeList:
    """A Node listing and the resourceVersion to watch from."""

    __slots__ = ("nodes", "resource_version")

    def __init__(self, nodes: list[Node], resource_version: str) -> None:
        self.nodes = nodes
        self.resource_version = resource_version


class _TokenAuth(httpx.Auth):
    """Bearer token, from the kubeconfig or re-read from a (rotating) token file."""

    def __init__(self, token: str, token_file: str) -> None:
        self._token = token
        self._file = token_file

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._token
        if self._file:
            try:
                with open(self._file) as f:
                    token = f.read().strip()
            except OSError:
                token = ""
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


def _ssl_context(conn: KubeConnection) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if conn.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif conn.ca_data:
        ctx = ssl.create_default_context(cadata=conn.ca_data.decode("ascii", "replace"))
    elif conn.ca_file:
        ctx = ssl.create_default_context(cafile=conn.ca_file)
    if conn.client_cert_data or conn.client_cert_file:
        if conn.client_cert_data or conn.client_key_data:
            # ssl loads certificates from files only: a private temporary file, removed at once.
            with tempfile.TemporaryDirectory() as tmp:
                cert = os.path.join(tmp, "cert.pem")
                key = os.path.join(tmp, "key.pem")
                with open(os.open(cert, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                    f.write(conn.client_cert_data or Path(conn.client_cert_file).read_bytes())
                with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                    f.write(conn.client_key_data or Path(conn.client_key_file).read_bytes())
                ctx.load_cert_chain(cert, key)
        else:
            ctx.load_cert_chain(conn.client_cert_file, conn.client_key_file or None)
    return ctx


def _status_error(what: str, resp: httpx.Response) -> KubeApiError:
    reason = ""
    message = resp.text.strip()[:300]
    try:
        body = resp.json()
        if isinstance(body, dict):
            reason = str(body.get("reason", ""))
            message = str(body.get("message", message))
    except ValueError:
        pass
    return _error(what, resp.status_code, reason, message)


def _error(what: str, status: int, reason: str, message: str) -> KubeApiError:
    hint = {
        401: "the API server rejected our credentials: check the token or client certificate",
        403: "RBAC forbids it: apply deploy/kube-pyflannel.yml's ClusterRole (nodes get/list/"
        "watch, nodes/status patch, pods get) and its binding",
        404: "it does not exist (yet)",
        410: "the resourceVersion is too old: list again",
    }.get(status, "check that the API server is up and reachable from this node")
    cls = KubeWatchExpired if status == 410 or reason in ("Expired", "Gone") else KubeApiError
    return cls(f"{what}: HTTP {status} {reason}: {message}".replace(":  :", ":"), hint=hint,
               status=status, reason=reason)  # fmt: skip


class KubeClient:
    """One connection pool to one API server. Construction does no I/O; :meth:`aclose` ends it."""

    def __init__(self, conn: KubeConnection, *, timeout: float = REQUEST_TIMEOUT) -> None:
        try:
            verify: ssl.SSLContext | bool = (
                _ssl_context(conn) if conn.server.startswith("https://") else True
            )
        except (OSError, ssl.SSLError) as exc:
            raise KubeApiError(
                f"cannot load the TLS files of {conn.source}: {exc}",
                hint="check the CA / client certificate and key named in the kubeconfig",
            ) from exc
        self.connection = conn
        self._http = httpx.AsyncClient(
            base_url=conn.server.rstrip("/"),
            verify=verify,
            auth=_TokenAuth(conn.token, conn.token_file),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=timeout,
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        content_type: str = "application/json",
    ) -> Any:
        try:
            resp = await self._http.request(
                method,
                path,
                params=params,
                content=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": content_type} if body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise _error(what, 0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 400:
            raise _status_error(what, resp)
        try:
            return resp.json()
        except ValueError as exc:
            raise _error(what, resp.status_code, "BadResponse", "not JSON") from exc

    async def get_node(self, name: str) -> Node:
        """GET one Node (KubeApiError with status 404 when it does not exist)."""
        return parse_node(await self._request("GET", f"/api/v1/nodes/{name}", f"get node {name!r}"))

    async def get_pod_node_name(self, namespace: str, name: str) -> str:
        """The ``spec.nodeName`` of a Pod ("" when not scheduled)."""
        obj = await self._request(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            f"error retrieving pod spec for '{namespace}/{name}'",
        )
        return str((obj.get("spec") or {}).get("nodeName") or "")

    async def list_nodes(self) -> NodeList:
        """Every Node, and the list's resourceVersion (paged like client-go, 500 a page)."""
        nodes: list[Node] = []
        params = {"limit": "500"}
        while True:
            obj = await self._request("GET", "/api/v1/nodes", "list nodes", params=params)
            nodes.extend(parse_node(item) for item in obj.get("items") or ())
            meta = obj.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                return NodeList(nodes, str(meta.get("resourceVersion", "")))
            params = {"limit": "500", "continue": str(cont)}

    @asynccontextmanager
    async def watch_nodes(
        self, resource_version: str, *, timeout_seconds: int | None = None
    ) -> AsyncIterator[AsyncIterator[NodeEvent | str]]:
        """Watch Nodes from ``resource_version``; yields events, or a bookmark's new
        resourceVersion (a ``str``). The iterator ends when the server closes the watch.
        Raises KubeWatchExpired when the version is too old (re-list)."""
        seconds = timeout_seconds or random.randint(WATCH_MIN_SECONDS, 2 * WATCH_MIN_SECONDS)
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(seconds),
        }
        what = f"watch nodes from resourceVersion {resource_version}"
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=seconds + 30.0)
        try:
            async with self._http.stream(
                "GET", "/api/v1/nodes", params=params, timeout=timeout
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _status_error(what, resp)
                yield self._events(resp, what)
        except httpx.HTTPError as exc:
            raise _error(what, 0, "Unreachable", f"{type(exc).__name__}: {exc}") from exc

    async def _events(self, resp: httpx.Response, what: str) -> AsyncIterator[NodeEvent | str]:
        async for line in resp.aiter_lines():
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
                kind = str(ev["type"])
                obj = ev["object"]
            except (ValueError, KeyError, TypeError) as exc:
                raise _error(what, 200, "BadEvent", f"undecodable event {line[:200]!r}") from exc
            if kind == "ERROR":
                raise _error(
                    what, int(obj.get("code", 0)), str(obj.get("reason", "")),
                    str(obj.get("message", "")),
                )  # fmt: skip
            if kind == "BOOKMARK":
                yield str((obj.get("metadata") or {}).get("resourceVersion", ""))
                continue
            yield NodeEvent(kind, parse_node(obj))

    async def patch_node_status(self, name: str, patch: Mapping[str, object], what: str) -> Node:
        """Strategic-merge PATCH of ``nodes/<name>/status`` (flannel's RBAC allows only this
        for writes; annotations are sent this way too)."""
        obj = await self._request(
            "PATCH",
            f"/api/v1/nodes/{name}/status",
            f"{what} of node {name!r}",
            body=patch,
            content_type=STRATEGIC_MERGE,
        )
        return parse_node(obj)

    async def create(
        self, path: str, obj: Mapping[str, object], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """POST an object to a collection path (``dry_run``: server-side ``dryRun=All``)."""
        kind = obj.get("kind", "object")
        result: dict[str, Any] = await self._request(
            "POST",
            path,
            f"create {kind} at {path}",
            params={"dryRun": "All"} if dry_run else None,
            body=obj,
        )
        return result

    async def request_json(
        self, method: str, path: str, body: object = None, *, content_type: str = ""
    ) -> Any:
        """Any other call (tests, tools): JSON in, JSON out, errors as KubeApiError."""
        return await self._request(
            method, path, f"{method} {path}", body=body,
            content_type=content_type or "application/json",
        )  # fmt: skip
