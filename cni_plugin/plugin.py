"""The ``flannel`` CNI plugin: entry point and the ADD/DEL/CHECK/GC/STATUS/VERSION handlers.

Contract (cni-spec.md; deliberate differences from flannel-io/cni-plugin are marked "unlike
flannel"):

* ADD: build the delegate config from flannel's config and subnet.env, look the delegate up on
  ``CNI_PATH``, save the config to ``<dataDir>/<name>:<CNI_CONTAINERID>:<CNI_IFNAME>`` (0600,
  dir 0700, temp file + rename; unlike flannel's ``<dataDir>/<CNI_CONTAINERID>``), run the
  delegate and hand its result over byte for byte (flannel re-encodes it; the JSON is equal).
  The installed plugin (:func:`run`) *execs* the delegate, so its stdout, stderr and exit code
  reach the runtime directly; in-process callers (:func:`main`, tests) spawn it and copy.
  Unlike flannel, the delegate is looked up *before* saving, and a delegate that cannot be
  started removes the file again: a failed ADD leaves nothing behind unless the delegate ran.
  If it ran and failed, the file stays: the runtime calls DEL next.
* DEL: replay the saved config to the delegate, then remove the file. Missing file = success.
  Unlike flannel (success, file kept, delegate never run: the pod's IP leaked), an unusable
  saved file is replaced by the config ADD would build now, so the delegate DEL still frees
  the IP; if even that cannot be built, success with a note and the file kept. Unlike
  flannel, a failed delegate DEL keeps the file so that a retried DEL finishes the job —
  unless the delegate rejected the config itself (codes 1, 2, 3, 6, 7), which no retry can fix.
* CHECK: success without calling the delegate (the Debian bridge's CHECK fails on flannel's
  gateway-less routes, cni-spec §3.3); CNI < 0.4.0 gets code 1 as in the skel.
* GC (CNI 1.1.0): drop saved configs of this network's attachments not in
  ``cni.dev/valid-attachments`` — only files carrying this network's marker, never another
  network's or a foreign file; forward GC to the delegate only if it speaks 1.1.0. Unlike
  flannel, which ignores GC.
* STATUS (CNI 1.1.0): code 50 while subnet.env is missing/unreadable/incomplete or the delegate
  is not installed, else success (forwarded to a delegate that speaks 1.1.0).
* Missing subnet.env on ADD: code 11 "try again later" (flannel: 999).
* Every failure is a CNI error object on stdout and exit code 1; never a traceback. Errors in
  flannel's config are code 7 (flannel: 999, same messages); dataDir I/O errors are code 5.

Modules other than :mod:`cni_plugin.protocol` are imported inside the handlers that need them,
so VERSION and early errors do not pay for them.
"""

import posix
import sys

from .protocol import (
    ERR_DECODE,
    ERR_INCOMPATIBLE_VERSION,
    ERR_INTERNAL,
    ERR_INVALID_NETWORK_CONFIG,
    ERR_IO,
    ERR_NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    CniError,
    check_config_version,
    error_document,
    json_kind,
    loads,
    read_cmd_args,
    valid_container_id,
    version_at_least,
    version_document,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO, NoReturn

    from .protocol import CmdArgs

__all__ = ["PLUGIN_VERSION", "Io", "main", "run"]

PLUGIN_VERSION = "v0.1.0-pyflannel"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}

# Delegate error codes that reject the config itself (incompatible version, unsupported field,
# unknown container, undecodable or invalid config): a retried DEL cannot do better.
_CONFIG_REJECTED = frozenset((1, 2, 3, 6, 7))


class Io:
    """Where one invocation reads and writes: the process's streams or a test's buffers."""

    __slots__ = ("environ", "replace_process", "stderr", "stdin", "stdout")

    def __init__(
        self,
        environ: "Mapping[str, str]",
        stdin: "BinaryIO | None",
        stdout: "BinaryIO",
        stderr: "BinaryIO",
        replace_process: bool = False,
    ) -> None:
        self.environ = environ
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        # The process may exec the ADD delegate instead of waiting for it (only run() does).
        self.replace_process = replace_process

    def out(self, data: bytes) -> None:
        """Write to stdout (results, errors)."""
        self.stdout.write(data)
        self.stdout.flush()

    def err(self, data: bytes) -> None:
        """Write diagnostics to stderr; never fail a command because stderr is gone."""
        try:
            self.stderr.write(data)
            self.stderr.flush()
        except (OSError, ValueError):
            pass

    def note(self, text: str) -> None:
        """One diagnostic line on stderr."""
        self.err(f"flannel: {text}\n".encode("utf-8", "replace"))


def _process_environ() -> "dict[str, str]":
    return {
        k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
        for k, v in posix.environ.items()
    }


def _decode_stdin(data: bytes) -> "dict[str, Any]":
    """The skel's config checks: parseable JSON (6), a network name (7) of valid characters."""
    try:
        raw = loads(data)
    except ValueError as e:
        raise CniError(ERR_DECODE, f"error unmarshall network config: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CniError(
            ERR_DECODE,
            f"error unmarshall network config: cannot unmarshal {json_kind(raw)} into a"
            " network config object",
        )
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise CniError(
            ERR_DECODE,
            f'error unmarshall network config: cannot unmarshal {json_kind(name)} into "name"'
            " of type string",
        )
    if not name:
        raise CniError(ERR_INVALID_NETWORK_CONFIG, "missing network name")
    if not valid_container_id(name):
        raise CniError(ERR_INVALID_NETWORK_CONFIG, "invalid characters found in network name", name)
    return raw


def _require_version(version: str, minimum: str, command: str) -> None:
    if not version_at_least(version, minimum):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"config version does not allow {command}")


def _data_dir(raw: "dict[str, Any]") -> str:
    """DEL needs nothing but ``dataDir`` from the config, and must not fail on the rest."""
    from .delegation import DEFAULT_DATA_DIR

    value = raw.get("dataDir")
    if value is None or value == "":
        return DEFAULT_DATA_DIR
    if not isinstance(value, str):
        raise CniError(
            ERR_INVALID_NETWORK_CONFIG,
            f'failed to load flannel netconf: "dataDir" must be a string, got {json_kind(value)}',
        )
    return value


def cmd_add(args: "CmdArgs", raw: "dict[str, Any]", io: Io) -> int:
    """ADD: save the delegate config, run the delegate, print its result."""
    from .delegation import (
        delegate_error,
        exec_plugin,
        find_plugin,
        remove_saved,
        run_plugin,
        save,
    )
    from .netconf import build_delegate, delegate_type, parse_flannel_conf, read_subnet_env
    from .protocol import dumps

    conf = parse_flannel_conf(raw)
    plugin = find_plugin(delegate_type(conf), args.path)
    delegate = build_delegate(conf, read_subnet_env(conf.subnet_file))
    data = dumps(delegate).encode("utf-8", "replace")
    path = save(conf.data_dir, conf.name, args.container_id, args.ifname, data)
    try:
        if io.replace_process:
            exec_plugin(plugin, "ADD", data, io.environ)
        outcome = run_plugin(plugin, "ADD", data, io.environ)
    except CniError:
        # The delegate never ran, so there is nothing for a DEL to undo.
        remove_saved(path)
        raise
    if outcome.stderr:
        io.err(outcome.stderr)
    if outcome.exit_code != 0:
        raise delegate_error(outcome)
    io.out(outcome.stdout)
    return 0


def _rebuild_delegate(raw: "dict[str, Any]", where: str, io: Io) -> "tuple[bytes, str] | None":
    """The delegate config ADD would build now, for a DEL whose saved copy is unusable."""
    from .netconf import build_delegate, delegate_type, parse_flannel_conf, read_subnet_env
    from .protocol import dumps

    try:
        conf = parse_flannel_conf(raw)
        delegate = build_delegate(conf, read_subnet_env(conf.subnet_file))
    except CniError as e:
        # As flannel: the bridge port may stay until reboot, but DEL must not fail forever.
        io.note(f"{where} is unusable and the config cannot be rebuilt ({e.msg}); left it")
        return None
    io.note(f"{where} is unusable (torn or not ours); running DEL with the current config")
    return dumps(delegate).encode("utf-8", "replace"), delegate_type(conf)


def cmd_del(args: "CmdArgs", raw: "dict[str, Any]", io: Io) -> int:
    """DEL: replay the saved delegate config; forget it once the delegate succeeded."""
    from .delegation import delegate_error, find_plugin, find_saved, remove_saved, run_plugin

    data_dir = _data_dir(raw)
    saved = find_saved(data_dir, raw["name"], args.container_id, args.ifname)
    if saved is None:
        return 0
    where = saved.path
    if saved.config is not None:
        config, plugin_type = saved.config, saved.plugin_type
    else:
        rebuilt = _rebuild_delegate(raw, where, io)
        if rebuilt is None:
            return 0
        config, plugin_type = rebuilt
    outcome = run_plugin(find_plugin(plugin_type, args.path), "DEL", config, io.environ)
    if outcome.stderr:
        io.err(outcome.stderr)
    if outcome.exit_code != 0:
        error = delegate_error(outcome)
        if error.code in _CONFIG_REJECTED:
            # The delegate refuses the saved config itself; replaying it can never succeed,
            # and a DEL that fails forever would leave the pod stuck. Forget it, as flannel.
            remove_saved(where)
            io.note(f"removed {where}: the delegate rejected it (code {error.code})")
        else:
            io.note(f"kept {where} so that the next DEL can finish the clean-up")
        raise error
    remove_saved(where)
    return 0


def _valid_attachments(raw: "dict[str, Any]") -> "set[tuple[str, str | None]]":
    """``(containerID, ifname)`` pairs to keep; ifname ``None`` keeps all of a container's."""
    attachments = raw.get("cni.dev/valid-attachments")
    if attachments is None:
        attachments = raw.get("cni.dev/attachments")  # libcni's older, misspelt key
    if not isinstance(attachments, list):
        raise CniError(
            ERR_INVALID_NETWORK_CONFIG,
            'GC needs "cni.dev/valid-attachments" (a list of {"containerID", "ifname"});'
            " the runtime sent none, so nothing was collected",
        )
    keep: set[tuple[str, str | None]] = set()
    for item in attachments:
        cid = item.get("containerID") if isinstance(item, dict) else None
        ifname = item.get("ifname") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not isinstance(ifname, (str, type(None))):
            raise CniError(
                ERR_INVALID_NETWORK_CONFIG,
                'every "cni.dev/valid-attachments" entry needs a string "containerID" (and'
                ' "ifname", if any, a string); nothing was collected',
            )
        keep.add((cid, ifname))
    return keep


def _delegate_speaks(plugin: str, version: str, command: str, io: Io) -> bool:
    from .delegation import query_versions

    versions = query_versions(plugin, io.environ)
    if isinstance(versions, str):
        io.note(f"not forwarding {command} to {plugin}: cannot tell its CNI versions: {versions}")
        return False
    if version not in versions:
        io.note(
            f"not forwarding {command} to {plugin}: it supports CNI {', '.join(versions)},"
            f" {command} needs {version}"
        )
        return False
    return True


def cmd_gc(args: "CmdArgs", raw: "dict[str, Any]", io: Io) -> int:
    """GC: remove saved configs of attachments the runtime no longer knows; forward GC.

    Keeps going past failures and reports the first one at the end, as the spec asks.
    """
    from .delegation import (
        collect_saved,
        delegate_error,
        find_plugin,
        list_saved,
        orphan_temps,
        remove_saved,
        run_plugin,
        saved_key,
        saved_path,
    )
    from .netconf import build_delegate, delegate_type, parse_flannel_conf, read_subnet_env
    from .protocol import dumps

    conf = parse_flannel_conf(raw)
    keep = _valid_attachments(raw)
    errors: list[CniError] = []
    try:
        found = list_saved(conf.data_dir, conf.name)
    except CniError as e:
        errors.append(e)
        found = []
    for cid, ifname in found:
        if (cid, ifname) in keep or (cid, None) in keep:
            continue
        try:
            if not collect_saved(conf.data_dir, conf.name, cid, ifname):
                key = saved_key(conf.name, cid, ifname)
                io.note(f"GC: left {conf.data_dir}/{key} alone, this plugin did not write it")
        except CniError as e:
            errors.append(e)
    try:
        for name in orphan_temps(conf.data_dir, conf.name):
            remove_saved(saved_path(conf.data_dir, name))
            io.note(f"GC: removed {conf.data_dir}/{name}, left by an ADD that was killed")
    except CniError as e:
        errors.append(e)
    try:
        plugin = find_plugin(delegate_type(conf), args.path)
        if _delegate_speaks(plugin, conf.cni_version, "GC", io):
            delegate = build_delegate(conf, read_subnet_env(conf.subnet_file))
            for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
                if key in raw:
                    delegate[key] = raw[key]
            outcome = run_plugin(plugin, "GC", dumps(delegate).encode(), io.environ)
            if outcome.stderr:
                io.err(outcome.stderr)
            if outcome.exit_code != 0:
                errors.append(delegate_error(outcome))
    except CniError as e:
        errors.append(e)
    if errors:
        raise errors[0]
    return 0


def cmd_status(args: "CmdArgs", raw: "dict[str, Any]", io: Io) -> int:
    """STATUS: ready when subnet.env is complete and the delegate is installed."""
    from .delegation import delegate_error, find_plugin, run_plugin
    from .netconf import build_delegate, delegate_type, parse_flannel_conf, read_subnet_env
    from .protocol import dumps

    conf = parse_flannel_conf(raw)
    try:
        subnet = read_subnet_env(conf.subnet_file)
        plugin = find_plugin(delegate_type(conf), args.path)
    except CniError as e:
        raise CniError(ERR_NOT_AVAILABLE, e.msg, e.details) from None
    if _delegate_speaks(plugin, conf.cni_version, "STATUS", io):
        delegate = build_delegate(conf, subnet)
        outcome = run_plugin(plugin, "STATUS", dumps(delegate).encode(), io.environ)
        if outcome.stderr:
            io.err(outcome.stderr)
        if outcome.exit_code != 0:
            raise delegate_error(outcome)
    return 0


def _about(io: Io, commit: str) -> int:
    machine = posix.uname().machine
    io.err(
        f"CNI Plugin flannel version {PLUGIN_VERSION} (linux/{_ARCH.get(machine, machine)})"
        f" commit {commit}\n"
        f"CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n".encode()
    )
    return 0


def _dispatch(io: Io, commit: str) -> int:
    args = read_cmd_args(io.environ)
    if args is None:
        return _about(io, commit)
    if args.command == "VERSION":
        io.out(version_document().encode())
        return 0
    try:
        data = io.stdin.read() if io.stdin is not None else b""
    except OSError as e:
        raise CniError(ERR_IO, f"error reading from stdin: {e}") from None
    raw = _decode_stdin(data)
    version = check_config_version(raw.get("cniVersion"))
    command = args.command
    if command == "ADD":
        return cmd_add(args, raw, io)
    if command == "DEL":
        return cmd_del(args, raw, io)
    if command == "CHECK":
        _require_version(version, "0.4.0", "CHECK")
        return 0
    _require_version(version, "1.1.0", command)
    if command == "GC":
        return cmd_gc(args, raw, io)
    return cmd_status(args, raw, io)


def main(
    environ: "Mapping[str, str] | None" = None,
    stdin: "BinaryIO | None" = None,
    stdout: "BinaryIO | None" = None,
    stderr: "BinaryIO | None" = None,
    *,
    commit: str = "unknown",
    replace_process: bool = False,
) -> int:
    """Run one CNI command and return the process exit code (0 success, 1 failure).

    Defaults are the process environment and standard streams; tests pass their own.
    Errors are printed to ``stdout`` as the CNI error object, never as a traceback.
    """
    if stdin is None and sys.stdin is not None:
        stdin = sys.stdin.buffer
    io = Io(
        environ if environ is not None else _process_environ(),
        stdin,
        stdout if stdout is not None else sys.stdout.buffer,
        stderr if stderr is not None else sys.stderr.buffer,
        replace_process,
    )
    try:
        return _dispatch(io, commit)
    except CniError as e:
        document = e.raw if e.raw is not None else error_document(e.code, e.msg, e.details).encode()
    except RecursionError:
        document = error_document(ERR_DECODE, "network config is nested too deeply").encode()
    except Exception as e:
        document = error_document(
            ERR_INTERNAL, f"internal error in the flannel plugin: {type(e).__name__}: {e}"
        ).encode()
    try:  # noqa: SIM105 - contextlib.suppress would cost an import
        io.out(document)
    except (OSError, ValueError):
        pass  # the runtime went away; the exit code still says it failed
    return 1


def run(commit: str = "unknown") -> "NoReturn":
    """Process entry point: :func:`main`, then exit without interpreter teardown.

    Everything is flushed already; skipping the finalisation of modules and objects saves
    about a millisecond per call, which matters when every pod start runs the plugin.
    """
    code = main(commit=commit, replace_process=True)
    # os._exit is public API despite its name: exit without running interpreter teardown
    posix._exit(code)  # noqa: SLF001
