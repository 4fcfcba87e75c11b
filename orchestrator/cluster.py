"""Which Ray a run uses, and connecting to it.

- ``--address`` (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) attaches to that cluster.
- Else ``RAY_ADDRESS`` (set by Ray inside a Ray Job, or by the user) attaches to that one.
- Else ckptlab starts a private local Ray that listens on 127.0.0.1 only, with token
  authentication on and a fresh token held in this process' environment (never written to
  disk, never printed), and shuts it down at the end.

A Ray already initialised in this process (a notebook, the test session) is used as it is.

Owns: ``choose_cluster`` and ``connect`` (which Ray, attached or private), the private Ray's
token and environment, and ``Boot`` (connecting on a thread). Must not: size or start workers
(``executors.py``), print or write a token, or import Ray at module level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

# Ray's own switch for single-machine Ray: with it off, a local instance takes 127.0.0.1 as
# its node address, and every Ray server (GCS, raylet, workers, agents) binds there instead
# of all interfaces. Ray reads it once, when it is imported.
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[\w.-]+):\d{1,5}$")


class ClusterError(RuntimeError):
    """Ray cannot be reached or refused us; ``str(err)`` is one line."""


class AddressError(ClusterError):
    """An address that names no Ray cluster (a usage error)."""


def check_address(address: str, where: str = "--address") -> str:
    """``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; anything else is a one-line error."""
    if address == "auto" or _HOST_PORT.match(address.removeprefix("ray://")):
        return address
    if address.startswith(("http://", "https://")):
        raise AddressError(
            f"{where}={address}: that is a Ray dashboard (Jobs API) address; "
            "use it with `ckptlab submit`, or give the cluster's HOST:PORT (GCS, e.g. :6379)"
        )
    raise AddressError(f"{where}={address!r}: expected auto, HOST:PORT or ray://HOST:PORT")


@dataclass(frozen=True)
class ClusterChoice:
    address: str | None  # None: a private local Ray, or the Ray this process already has
    source: str  # "--address", "RAY_ADDRESS", "private" or "existing"

    @property
    def private(self) -> bool:
        return self.source == "private"


def choose_cluster(address: str | None) -> ClusterChoice:
    """--address, else RAY_ADDRESS, else a private local Ray; validated either way, then
    superseded by a Ray this process already initialised (a notebook, the test session)."""
    from_env = os.environ.get("RAY_ADDRESS", "").strip()
    if address:
        choice = ClusterChoice(check_address(address), "--address")
    elif from_env:
        choice = ClusterChoice(check_address(from_env, "RAY_ADDRESS"), "RAY_ADDRESS")
    else:
        choice = ClusterChoice(None, "private")
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return ClusterChoice(None, "existing")
    return choice


def private_ray_environment() -> None:
    """Environment of a private local Ray, set before ``import ray``: loopback only, token
    authentication with a per-process token, no usage stats. A user's explicit RAY_AUTH_MODE
    (or token) wins."""
    os.environ[_SINGLE_MACHINE] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ["RAY_AUTH_MODE"] == "token" and not (
        os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    ):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    if "ray" in sys.modules:
        # Imported before we could set the switch (e.g. by a user's own code): apply it,
        # and have Ray read the auth mode again, as Ray itself does when it turns auth on.
        from ray._private import ray_constants
        from ray._raylet import Config

        ray_constants.ENABLE_RAY_CLUSTER = False
        Config.initialize("")


def _job_env_vars() -> set[str]:
    """Env vars the enclosing Ray Job already sets: ray.init may not set them again."""
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    config = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not config:
        return set()
    return set((json.loads(config).get("runtime_env") or {}).get("env_vars", {}))


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) that nothing answers on fails in seconds with one
    line, instead of Ray's minutes of retries."""
    if address == "auto":  # the cluster `ray start` last started here, if it still answers
        from ray._private.services import get_ray_address_from_environment

        try:
            address = get_ray_address_from_environment("auto", None)
        except Exception as err:
            raise ClusterError(f"--address auto: {str(err).splitlines()[0]}") from None
        if not address or address == "auto":
            raise ClusterError("--address auto: no running Ray cluster found on this machine")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ClusterError(f"cannot reach Ray at {address}: {err.strerror or err}") from None


# Ray Client's words when its head-side server could not start this client's session.
_CLIENT_SESSION_FAILED = "Initialization failure from server"
CLIENT_SESSION_ATTEMPTS = 2
CLIENT_SESSION_RETRY_S = 2.0


def connect(choice: ClusterChoice, env_vars: dict[str, str]) -> bool:
    """``ray.init`` for ``choice``; True when this call started Ray (and must shut it down).
    Workers get ``env_vars`` (never a token: a runtime env is visible in Ray's state API)."""
    if choice.source == "existing":
        return False
    if choice.private:
        private_ray_environment()
    import ray
    from ray.exceptions import AuthenticationError

    if choice.address:
        _reachable(choice.address)
    env = {k: v for k, v in env_vars.items() if k not in _job_env_vars()}
    try:
        # Ray Client's proxy on the head starts one server process per session, and now and
        # then that process exits at once, leaving empty logs (seen on a loaded 2-core
        # machine). A new session gets a new process: try once more.
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_client_session_failed),
            stop=tenacity.stop_after_attempt(CLIENT_SESSION_ATTEMPTS),
            wait=tenacity.wait_fixed(CLIENT_SESSION_RETRY_S),
            before_sleep=lambda state: sys.stderr.write(
                f"note: Ray Client's server at {choice.address} could not start a session "
                f"({_cause(state.outcome.exception())}); trying again\n"
            ),
            reraise=True,
        )
        retrying(
            ray.init,
            # "local" always starts a private instance; None would silently attach to any
            # cluster that `ray start` left running on this machine.
            address=choice.address or "local",
            include_dashboard=False if choice.private else None,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": env},
        )
    except AuthenticationError:
        raise ClusterError(
            f"Ray at {choice.address} ({choice.source}) refused us: it uses token "
            "authentication; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
            "RAY_AUTH_TOKEN_PATH) to the cluster's token"
        ) from None
    except ConnectionError as err:
        first = _cause(err)
        # A cluster that refuses our token looks the same from here: say what to check.
        if os.environ.get("RAY_AUTH_MODE") == "token":
            hint = "; is RAY_AUTH_TOKEN the cluster's token?"
        else:
            hint = "; a cluster with token auth needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"
        if first.startswith(_CLIENT_SESSION_FAILED):  # Ray Client's own server
            hint += ". The head node's ray_client_server*.err logs say more"
        raise ClusterError(
            f"cannot reach Ray at {choice.address} ({choice.source}): {first}{hint}"
        ) from None
    return True


class Boot:
    """``connect`` on a thread of its own, so that Ray starts while the driver plans.

    The thread lives until ``release``: a private Ray's GCS and raylet get a parent-death
    signal, which Linux sends when the *thread* that started them ends, not the process
    (measured: a Ray started from a thread that then returned lost its GCS, and the driver
    gave up a minute later). Ray sets its SIGTERM handler only from the main thread; this
    sets the same one (exit, so that the shutdown handlers run) when no other is set."""

    def __init__(
        self,
        choice: ClusterChoice,
        env_vars: dict[str, str],
        then: Callable[[], None] | None = None,
    ):
        """``then``: run on the thread once Ray is up (its errors are ignored: whatever it
        started early is started again where it is needed)."""
        self.choice, self.env_vars, self.then = choice, env_vars, then
        self.started = False
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._release = threading.Event()
        if choice.private:  # its environment, before anything imports Ray
            private_ray_environment()
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
            logging.getLogger("ray._private.worker").addFilter(_NoSigtermWarning())
        self._thread = threading.Thread(target=self._main, name="ray-boot", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.started = connect(self.choice, self.env_vars)
            if self.then is not None:
                with contextlib.suppress(Exception):
                    self.then()
        except BaseException as err:  # handed to the waiting thread
            self.error = err
        finally:
            self._done.set()
        self._release.wait()

    def wait(self) -> bool:
        """Block until Ray is up: True when this boot started it; its error otherwise."""
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.started

    def release(self) -> None:
        """Let the thread end: after ``ray.shutdown``, or when Ray never started."""
        self._release.set()


class _NoSigtermWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


def _client_session_failed(err: BaseException) -> bool:
    return isinstance(err, ConnectionError) and _cause(err).startswith(_CLIENT_SESSION_FAILED)


def _cause(err: Exception) -> str:
    """One line of a connection error. Ray Client's "Initialization failure from server:" is
    followed by the server's whole traceback, whose last line is the cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[-1]}"
    return lines[0]


def describe(choice: ClusterChoice) -> str:
    """One line: which Ray this run uses and what it has."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    have = ", ".join(f"{resources[k]:g} {k}" for k in ("CPU", "GPU") if resources.get(k))
    if choice.private:
        auth = "token auth" if os.environ.get("RAY_AUTH_MODE") == "token" else "auth disabled"
        where = f"private local Ray on {nodes[0]['NodeManagerAddress']} ({auth})"
    elif choice.source == "existing":
        where = "the Ray this process already had"
    elif choice.address == "auto":
        where = f"Ray cluster {ray.get_runtime_context().gcs_address} (from {choice.source} auto)"
    else:
        where = f"Ray cluster {choice.address} (from {choice.source})"
    return f"{where}: {len(nodes)} node{'s' * (len(nodes) != 1)}, {have or 'no CPUs'}"
