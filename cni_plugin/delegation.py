"""Running the delegate plugin, and keeping the config it was given for the later DEL.

**Saved state** lives in ``<dataDir>/<network>:<containerID>:<ifname>`` (file 0600, directory
0700) — keyed like libcni's own cache, so two networks sharing a dataDir, or two interfaces of
one container, never share a file (``:`` is allowed in none of the three names). The file is
one marker line naming those three, then the exact bytes handed to the delegate on ADD, so
that DEL replays them even after subnet.env or the network config changed, and GC removes
only files that carry the marker of *its* network. It is written to a temp file, ``fsync``-ed
and renamed over the old one (and the directory ``fsync``-ed): concurrent ADDs for one
container cannot tear it, and after a crash the runtime's DEL still finds it.

flannel's own layout, ``<dataDir>/<containerID>`` holding the bare delegate config, is still
read by DEL (pods added before an upgrade), but only when its ``name`` is this network; GC
never touches such files, as nothing in them says which network wrote them.

**Delegates** are found as ``<dir>/<type>`` in each ``CNI_PATH`` directory (first regular file
wins), run with the caller's environment where only ``CNI_COMMAND`` changes, and fed their
config on stdin — as the Go library's ``pkg/invoke`` does. :func:`run_plugin` sends their
stdout and stderr to anonymous memory files rather than pipes: nothing can dead-lock, no reader
thread is needed, and the plugin decides what to print after the delegate exited.
:func:`exec_plugin` instead replaces the process with the delegate (the installed plugin's ADD).

Start-up cost is why this uses :mod:`posix` (``posix_spawn``, ``execve``) directly:
:mod:`subprocess` costs ~20 ms of import time and :mod:`os` ~1 ms, against a budget of ~2 ms
for the whole plugin.
"""

import _signal  # type: ignore[import-not-found]  # signal.py imports enum: ~1 ms
import posix
import time

from .protocol import ERR_INTERNAL, ERR_IO, CniError, loads, quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

__all__ = [
    "DEFAULT_DATA_DIR",
    "MAX_SAVED_SIZE",
    "FileRefused",
    "Outcome",
    "Saved",
    "collect_saved",
    "delegate_error",
    "exec_plugin",
    "find_plugin",
    "find_saved",
    "list_saved",
    "query_versions",
    "read_limited",
    "remove_saved",
    "run_plugin",
    "save",
    "saved_key",
    "saved_path",
    "state_marker",
]

# flannel's default for "dataDir"; here rather than in netconf so DEL need not import that.
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"

# A saved delegate config is a few hundred bytes; anything this large was not written by ADD.
MAX_SAVED_SIZE = 1 << 20

_MARKER = "pyflannel-cni-state/1"
_S_IFMT = 0o170000
_S_IFREG = 0o100000
_FILE_KINDS = {
    0o010000: "a FIFO",
    0o020000: "a character device",
    0o040000: "a directory",
    0o060000: "a block device",
    0o140000: "a socket",
}
_ETXTBSY = 26
_TXTBSY_RETRIES = 5

# ----------------------------------------------------------------------------------------------
# Bounded reads


class FileRefused(ValueError):
    """A file that is not a regular file, or larger than the caller's limit; never read whole."""


def read_limited(path: str, limit: int) -> bytes:
    """The content of regular file ``path``, at most ``limit`` bytes.

    ``FileRefused`` for anything else (``/dev/zero`` would fill memory, a FIFO would block
    forever: it is opened non-blocking and refused after ``fstat``); ``OSError`` as ``open``.
    """
    fd = posix.open(path, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC | posix.O_NOCTTY)
    try:
        kind = posix.fstat(fd).st_mode & _S_IFMT
        if kind != _S_IFREG:
            raise FileRefused(f"{path} is {_FILE_KINDS.get(kind, 'not a regular file')}")
        chunks = []
        size = 0
        while size <= limit:
            chunk = posix.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(f"{path} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        posix.close(fd)


# ----------------------------------------------------------------------------------------------
# Saved delegate configs


def saved_key(network: str, container_id: str, ifname: str) -> str:
    """The file name of one attachment's saved state."""
    return f"{network}:{container_id}:{ifname}"


def state_marker(network: str, container_id: str, ifname: str) -> bytes:
    """The first line of a saved-state file: who wrote it, for which attachment."""
    return f"{_MARKER} {network} {container_id} {ifname}\n".encode("utf-8", "surrogateescape")


def saved_path(data_dir: str, name: str) -> str:
    """Where the file ``name`` (a :func:`saved_key` or a legacy container ID) lives."""
    return f"{data_dir.rstrip('/')}/{name}"


def _io_error(what: str, path: str, err: OSError) -> CniError:
    reason = (err.strerror or str(err)).lower()
    return CniError(ERR_IO, f"failed to {what} {path}: {reason}")


def _makedirs(path: str) -> None:
    """``mkdir -p`` with mode 0700 for every directory it creates."""
    try:
        posix.mkdir(path, 0o700)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = path.rstrip("/").rpartition("/")[0]
        if not parent:
            raise
        _makedirs(parent)
        try:
            posix.mkdir(path, 0o700)
        except FileExistsError:
            return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[posix.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    fd = posix.open(path, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


# A temp file older than this whose writer is gone can never be renamed into place. The age
# keeps GC from racing an ADD in another PID namespace (its PID means nothing here); a day
# covers a reused PID.
ORPHAN_TEMP_AGE = 60.0
ORPHAN_TEMP_MAX_AGE = 86400.0
_PID_MAX_LIMIT = 1 << 22


def _temp_name(key: str) -> str:
    # A leading dot: no network name starts with one, so GC never mistakes it for state. The
    # writer's PID lets GC tell a killed ADD's leftover (see orphan_temps) from one in progress.
    return f".{key}.{posix.getpid()}.{posix.urandom(4).hex()}.tmp"


def _temp_writer(name: str, network: str) -> "int | None":
    """The writer PID in a :func:`_temp_name` of ``network``; None for any other name."""
    if not (name.startswith(f".{network}:") and name.endswith(".tmp")):
        return None
    # container IDs may hold dots: split from the right
    parts = name[: -len(".tmp")].rsplit(".", 2)
    # isascii: str.isdigit() also accepts "²", which int() refuses
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[2]) != 8:
        return None
    pid = int(parts[1])
    # Linux PIDs are 1..2**22 (PID_MAX_LIMIT); kill() would raise OverflowError on a larger one
    # and treat 0 as our own process group.
    return pid if 0 < pid <= _PID_MAX_LIMIT else None


def save(data_dir: str, network: str, container_id: str, ifname: str, data: bytes) -> str:
    """Save ``data`` (the delegate config) for one attachment, atomically and durably.

    Returns the path. Readers see the old file or the new one, never a mix of two writers.
    """
    key = saved_key(network, container_id, ifname)
    path = saved_path(data_dir, key)
    try:
        _makedirs(data_dir)
    except OSError as e:
        raise _io_error("create data directory", data_dir, e) from None
    temp = saved_path(data_dir, _temp_name(key))
    try:
        fd = posix.open(
            temp,
            posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC,
            0o600,
        )
        try:
            _write_all(fd, state_marker(network, container_id, ifname) + data)
            posix.fsync(fd)
        finally:
            posix.close(fd)
        posix.rename(temp, path)
    except OSError as e:
        try:  # noqa: SIM105 - contextlib.suppress would cost an import
            posix.unlink(temp)
        except OSError:
            pass
        raise _io_error("save delegate config", path, e) from None
    try:
        _fsync_dir(data_dir)
    except OSError as e:
        raise _io_error("sync data directory", data_dir, e) from None
    return path


class Saved:
    """A saved delegate config found for DEL.

    ``config`` is ``None`` when the file is there but unusable (torn, truncated, no marker):
    DEL then rebuilds the config as ADD would, runs the delegate and removes ``path``.
    """

    __slots__ = ("config", "path", "plugin_type")

    def __init__(self, path: str, config: "bytes | None", plugin_type: str) -> None:
        self.path = path
        self.config = config
        self.plugin_type = plugin_type


def _delegate_type(data: bytes, network: "str | None") -> "str | None":
    """The ``type`` of a delegate config (and its ``name`` must be ``network`` if given)."""
    try:
        doc = loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    plugin_type = doc.get("type")
    if not isinstance(plugin_type, str) or not plugin_type or "/" in plugin_type:
        return None
    if network is not None and doc.get("name") != network:
        return None
    return plugin_type


def _read_saved(path: str) -> "bytes | None":
    try:
        return read_limited(path, MAX_SAVED_SIZE)
    except FileNotFoundError:
        return None
    except FileRefused as e:
        raise CniError(
            ERR_IO, f"failed to read saved delegate config: {e}; remove it by hand"
        ) from None
    except OSError as e:
        raise _io_error("read saved delegate config", path, e) from None


def find_saved(data_dir: str, network: str, container_id: str, ifname: str) -> "Saved | None":
    """The saved state of one attachment, or ``None`` when there is none.

    Falls back to flannel's ``<dataDir>/<containerID>`` when it holds a readable delegate
    config of this network; such a file that is unreadable or names another network is not
    provably ours and is left alone (``None``).
    """
    path = saved_path(data_dir, saved_key(network, container_id, ifname))
    data = _read_saved(path)
    if data is not None:
        marker = state_marker(network, container_id, ifname)
        body = data[len(marker) :]
        plugin_type = _delegate_type(body, None) if data.startswith(marker) else None
        if plugin_type is None:
            return Saved(path, None, "")
        return Saved(path, body, plugin_type)
    legacy = saved_path(data_dir, container_id)
    try:
        data = _read_saved(legacy)
    except CniError:
        return None  # a directory or FIFO of that name is not flannel's file either
    plugin_type = None if data is None else _delegate_type(data, network)
    if data is None or plugin_type is None:
        return None
    return Saved(legacy, data, plugin_type)


def remove_saved(path: str) -> None:
    """Delete the saved-state file ``path``; a missing file is fine."""
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _io_error("remove saved delegate config", path, e) from None


def collect_saved(data_dir: str, network: str, container_id: str, ifname: str) -> bool:
    """GC of one attachment: remove its state file if it carries this network's marker.

    ``False`` (file left alone) when it does not: it was not written by this plugin for
    ``network``, so it is none of GC's business.
    """
    path = saved_path(data_dir, saved_key(network, container_id, ifname))
    data = _read_saved(path)
    if data is None:
        return True
    if not data.startswith(state_marker(network, container_id, ifname)):
        return False
    remove_saved(path)
    return True


def _names(data_dir: str) -> "list[str]":
    """The names in ``data_dir``, sorted; a missing directory is empty."""
    try:
        return sorted(posix.listdir(data_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise _io_error("list", data_dir, e) from None


def list_saved(data_dir: str, network: str) -> "list[tuple[str, str]]":
    """``(containerID, ifname)`` of every state file named for ``network`` (sorted).

    Only regular files with a well-formed name count; whether the content carries the marker
    is for the caller to check before deleting. A missing directory is empty.
    """
    names = _names(data_dir)
    found = []
    for name in names:
        parts = name.split(":")
        if len(parts) != 3 or parts[0] != network or not parts[1] or not parts[2]:
            continue
        try:
            mode = posix.lstat(saved_path(data_dir, name)).st_mode
        except OSError:
            continue
        if mode & _S_IFMT == _S_IFREG:
            found.append((parts[1], parts[2]))
    return found


def _writer_alive(pid: int) -> bool:
    try:
        posix.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: a process of another user holds the PID
        return True
    return True


def orphan_temps(data_dir: str, network: str, now: "float | None" = None) -> "list[str]":
    """The names of ``network``'s temp files that a killed :func:`save` left (sorted): its
    writer's PID is gone and the file is over a minute old, or the file is over a day old."""
    names = _names(data_dir)
    when = time.time() if now is None else now
    found = []
    for name in names:
        pid = _temp_writer(name, network)
        if pid is None:
            continue
        try:
            st = posix.lstat(saved_path(data_dir, name))
        except OSError:
            continue
        if st.st_mode & _S_IFMT != _S_IFREG:
            continue
        age = when - st.st_mtime
        dead = age > ORPHAN_TEMP_AGE and not _writer_alive(pid)
        if dead or age > ORPHAN_TEMP_MAX_AGE:
            found.append(name)
    return found


# ----------------------------------------------------------------------------------------------
# Delegates


class Outcome:
    """How a delegate run ended: exit code (negative = killed by that signal) and its output."""

    __slots__ = ("exit_code", "stderr", "stdout")

    def __init__(self, exit_code: int, stdout: bytes, stderr: bytes) -> None:
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


def find_plugin(name: str, cni_path: str) -> str:
    """Full path of plugin ``name`` in the ``:``-separated ``cni_path``; ``CniError`` if absent.

    Empty ``CNI_PATH`` entries are skipped (Go would look in the current directory).
    """
    if not name:
        raise CniError(ERR_INTERNAL, "no plugin name provided")
    if "/" in name:
        raise CniError(ERR_INTERNAL, f"invalid plugin name: {name}")
    dirs = [d for d in cni_path.split(":") if d]
    if not dirs:
        raise CniError(ERR_INTERNAL, "no paths provided")
    for directory in dirs:
        candidate = f"{directory.rstrip('/')}/{name}"
        try:
            mode = posix.stat(candidate).st_mode
        except (OSError, ValueError):
            continue
        if mode & _S_IFMT == _S_IFREG:
            return candidate
    raise CniError(ERR_INTERNAL, f'failed to find plugin "{name}" in path [{" ".join(dirs)}]')


def _scratch_fd(name: str) -> int:
    try:
        return posix.memfd_create(name, posix.MFD_CLOEXEC)
    except (AttributeError, OSError):
        # Kernels or sandboxes without memfd: an unnamed file in /tmp behaves the same.
        return posix.open("/tmp", posix.O_TMPFILE | posix.O_RDWR | posix.O_CLOEXEC, 0o600)


def _data_fd(data: bytes) -> int:
    fd = _scratch_fd("cni-stdin")
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view) :]
        posix.lseek(fd, 0, 0)
    except BaseException:
        posix.close(fd)
        raise
    return fd


def _read_all(fd: int) -> bytes:
    size = posix.lseek(fd, 0, 2)
    chunks = []
    offset = 0
    while offset < size:
        chunk = posix.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def run_plugin(path: str, command: str, stdin: bytes, environ: "Mapping[str, str]") -> Outcome:
    """Run plugin ``path`` with ``CNI_COMMAND=command`` and ``stdin``; wait for it to exit.

    ``CniError`` (999) only when it could not be started at all; its own failures are in the
    returned :class:`Outcome`. "Text file busy" (a plugin binary being replaced) is retried
    five times, one second apart, as the Go library does.
    """
    env = dict(environ)
    env["CNI_COMMAND"] = command
    in_fd = _data_fd(stdin)
    out_fd = _scratch_fd("cni-stdout")
    err_fd = _scratch_fd("cni-stderr")
    try:
        actions = [
            (posix.POSIX_SPAWN_DUP2, in_fd, 0),
            (posix.POSIX_SPAWN_DUP2, out_fd, 1),
            (posix.POSIX_SPAWN_DUP2, err_fd, 2),
        ]
        attempt = 0
        while True:
            try:
                # Python ignores SIGPIPE/SIGXFSZ for itself; the child gets the defaults back.
                pid = posix.posix_spawn(
                    path,
                    [path],
                    env,
                    file_actions=actions,
                    setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ),
                )
                break
            except OSError as e:
                attempt += 1
                if e.errno == _ETXTBSY and attempt <= _TXTBSY_RETRIES:
                    time.sleep(1)
                    continue
                reason = (e.strerror or str(e)).lower()
                raise CniError(ERR_INTERNAL, f"fork/exec {path}: {reason}") from None
        _, status = posix.waitpid(pid, 0)
        return Outcome(posix.waitstatus_to_exitcode(status), _read_all(out_fd), _read_all(err_fd))
    finally:
        posix.close(in_fd)
        posix.close(out_fd)
        posix.close(err_fd)


def exec_plugin(path: str, command: str, stdin: bytes, environ: "Mapping[str, str]") -> "NoReturn":
    """Replace this process with plugin ``path`` (``CNI_COMMAND=command``, ``stdin``).

    Returns only by raising ``CniError`` when the plugin cannot be started; the plugin's exit
    code, stdout and stderr then reach the runtime directly. Used for ADD by the installed
    plugin: no second process to wait for and to wake up, which is measurable under load.
    """
    env = dict(environ)
    env["CNI_COMMAND"] = command
    in_fd = _data_fd(stdin)
    posix.dup2(in_fd, 0)
    posix.close(in_fd)
    # What posix_spawn's setsigdef does for run_plugin: Python ignores these for itself.
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
    attempt = 0
    while True:
        try:
            posix.execve(path, [path], env)
        except OSError as e:
            attempt += 1
            if e.errno == _ETXTBSY and attempt <= _TXTBSY_RETRIES:
                time.sleep(1)
                continue
            reason = (e.strerror or str(e)).lower()
            raise CniError(ERR_INTERNAL, f"fork/exec {path}: {reason}") from None


def _unparsable(out: bytes, why: object) -> CniError:
    text = quote(out.decode("utf-8", "replace"))
    return CniError(
        ERR_INTERNAL, f"netplugin failed but error parsing its diagnostic message {text}: {why}"
    )


def delegate_error(outcome: Outcome) -> CniError:
    """The error to report for a failed delegate run, like the Go library's ``pluginErr``.

    A proper CNI error object on the delegate's stdout is passed through byte for byte.
    """
    out = outcome.stdout
    if out.strip():
        try:
            doc = loads(out)
        except ValueError as e:
            return _unparsable(out, e)
        code = doc.get("code") if isinstance(doc, dict) else None
        if not isinstance(code, int) or isinstance(code, bool):
            return _unparsable(out, "no numeric error code")
        msg = doc.get("msg")
        details = doc.get("details")
        return CniError(
            code,
            msg if isinstance(msg, str) else "",
            details if isinstance(details, str) else "",
            raw=out,
        )
    if outcome.stderr.strip():
        text = quote(outcome.stderr.decode("utf-8", "replace"))
        return CniError(ERR_INTERNAL, f"netplugin failed: {text}")
    if outcome.exit_code < 0:
        status = f"signal: killed by signal {-outcome.exit_code}"
    else:
        status = f"exit status {outcome.exit_code}"
    return CniError(ERR_INTERNAL, f"netplugin failed with no error message: {status}")


def query_versions(path: str, environ: "Mapping[str, str]") -> "list[str] | str":
    """The spec versions plugin ``path`` supports (its VERSION answer), or why we cannot tell."""
    try:
        outcome = run_plugin(path, "VERSION", b'{"cniVersion":"0.4.0"}', environ)
    except CniError as e:
        return e.msg
    if outcome.exit_code != 0:
        return delegate_error(outcome).msg
    try:
        doc = loads(outcome.stdout)
    except ValueError as e:
        return f"unparsable VERSION answer: {e}"
    versions = doc.get("supportedVersions") if isinstance(doc, dict) else None
    if not isinstance(versions, list):
        return "VERSION answer has no supportedVersions list"
    return [v for v in versions if isinstance(v, str)]
