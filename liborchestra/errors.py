"""Errors raised by liborchestra.

Every error carries a message meant for a person: what failed, where, and what to do. CLIs print
`str(error)` on one line and exit non-zero; they never show a traceback for these.
"""


class OrchestraError(Exception):
    """Base of every error the library raises on purpose."""


class ProfileError(OrchestraError):
    """A profile file is missing or invalid: names the file, the field and what was expected."""

    def __init__(self, source: str, field: str | None, message: str) -> None:
        self.source, self.field = source, field
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {message}")


class SSHError(OrchestraError):
    """An SSH host could not be used (unreachable, authentication, host key)."""


class HostKeyError(SSHError):
    """The host key of a server is unknown or differs from known_hosts."""


class ConnectionLostError(SSHError):
    """An established connection died; the operation may be retried on a new one."""


class TransferError(OrchestraError):
    """Code could not be shipped or results fetched (hash mismatch, remote tar failure)."""


class LaunchError(OrchestraError):
    """The remote wrapper could not start an execution."""


class CodeMissing(LaunchError):
    """The code archive is gone from the remote (pruned, or cleaned): the execution is lost
    and the archive sent again for its next attempt."""


class SchedulerError(OrchestraError):
    """A scheduler refused or failed an allocation; carries the scheduler's own message."""


# What a scheduler says when it is busy, stalled or briefly out of reach. Such a refusal may
# succeed if asked again later; any other refusal (unknown partition, QOS or account, more nodes
# than exist, walltime over the limit, a typo) cannot, and fails the waiting work at once.
TRANSIENT_MARKERS = (
    "socket timed out",  # Slurm: "Socket timed out on send/recv operation"
    "unable to contact slurm controller",
    "slurm_receive_msg",
    "connection refused",
    "connection timed out",
    "connection reset",
    "transport endpoint",
    "resource temporarily unavailable",
    "try again",
    "temporarily",
    "communication failure",
    "slurmctld is not responding",
    "job submit/allocate failed: socket",
    "unable to contact qmaster",  # Grid Engine
    "unable to send message to qmaster",
    "cannot reach qmaster",
    "commlib error",
    "failed receiving gdi request",
    "can't unpack gdi request",
    "error: unable to connect",
    "got no connection within",
    "timed out",
    "timeout",
)


def is_transient(error: BaseException) -> bool:
    """Whether asking again later may succeed: a dropped connection to the login host, or a
    scheduler that did not answer in time."""
    if isinstance(error, ConnectionLostError):
        return True
    if isinstance(error, SchedulerError):
        text = str(error).lower()
        return any(marker in text for marker in TRANSIENT_MARKERS)
    return False
