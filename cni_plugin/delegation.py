"""Running the delegate plugin, and keeping the config it was given for the later DEL.

**Saved configs** live in ``<dataDir>/<containerID>`` (file 0600, directory 0700), holding the
exact bytes handed to the delegate on ADD, so that DEL replays them even after subnet.env or the
network config changed. Like flannel, the file is written in place and ``fsync``-ed: after a
crash the runtime still calls DEL and needs the file to release the pod's IP (host-local's
state is on disk too). A temp file + rename would not be durable without an extra directory
``fsync``, and ADD/DEL never race for one container.

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
    "Outcome",
    "delegate_error",
    "exec_plugin",
    "find_plugin",
    "list_saved",
    "load_saved",
    "query_versions",
    "remove_saved",
    "run_plugin",
    "save",
    "saved_path",
]

# flannel's default for "dataDir"; here rather than in netconf so DEL need not import that.
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"

_S_IFMT = 0o170000
_S_IFREG = 0o100000
_ETXTBSY = 26
_TXTBSY_RETRIES = 5

# ----------------------------------------------------------------------------------------------
# Saved delegate configs


def saved_path(data_dir: str, container_id: str) -> str:
    """Where the delegate config of ``container_id`` lives."""
    return f"{data_dir.rstrip('/')}/{container_id}"


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


def save(data_dir: str, container_id: str, data: bytes) -> str:
    """Write ``data`` durably as the saved config of ``container_id``; return the path."""
    path = saved_path(data_dir, container_id)
    try:
        _makedirs(data_dir)
    except OSError as e:
        raise _io_error("create data directory", data_dir, e) from None
    try:
        fd = posix.open(
            path, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_CLOEXEC, 0o600
        )
        try:
            view = memoryview(data)
            while view:
                view = view[posix.write(fd, view) :]
            posix.fsync(fd)
        finally:
            posix.close(fd)
    except OSError as e:
        raise _io_error("save delegate config", path, e) from None
    return path


def load_saved(data_dir: str, container_id: str) -> "bytes | None":
    """The saved config of ``container_id``, or ``None`` when there is none."""
    path = saved_path(data_dir, container_id)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _io_error("read saved delegate config", path, e) from None


def remove_saved(data_dir: str, container_id: str) -> None:
    """Delete the saved config of ``container_id``; a missing file is fine."""
    path = saved_path(data_dir, container_id)
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _io_error("remove saved delegate config", path, e) from None


def list_saved(data_dir: str) -> "list[str]":
    """Names of the regular files in ``data_dir`` (sorted); a missing directory is empty."""
    try:
        names = posix.listdir(data_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise _io_error("list", data_dir, e) from None
    found = []
    for name in sorted(names):
        try:
            mode = posix.lstat(saved_path(data_dir, name)).st_mode
        except OSError:
            continue
        if mode & _S_IFMT == _S_IFREG:
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
