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


class SchedulerError(OrchestraError):
    """A scheduler refused or failed an allocation; carries the scheduler's own message."""
