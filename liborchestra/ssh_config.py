"""What ~/.ssh/config says about a host, read as asyncssh reads it, plus what it does not honour.

asyncssh parses OpenSSH client configs (Host, Match host/originalhost/user/localuser/exec/
tagged/canonical/final, Include, ProxyJump, ProxyCommand, Hostname, Port, User, IdentityFile,
IdentityAgent, UserKnownHostsFile, ...). It silently skips the options it does not know, and
some of them change how OpenSSH connects; `resolve` notes each such line that applies to the
host, once, with its file and line (`HostConfig.notes`, also logged as a warning), and turns a
config asyncssh refuses (e.g. an unknown Match criterion) into one SSHError naming the line.

ProxyJump is resolved here, not inside asyncssh, so that the pool keeps one connection per jump
host for all the nodes behind it and an error names the hop that failed (see ssh.py).
"""

from __future__ import annotations

import getpass
import linecache
import logging
import os
from pathlib import Path
from typing import Any

import asyncssh
import attrs
from asyncssh.config import ConfigParseError, SSHClientConfig

from liborchestra.errors import SSHError

log = logging.getLogger(__name__)
MAX_HOPS = 8  # longer ProxyJump chains are taken for loops

# Options asyncssh ignores that do not matter to a client that runs commands over connections
# it pools itself (no terminal, no forwarding, no prompts): skipped without a word.
HARMLESS = frozenset(o.lower() for o in (
    "AddKeysToAgent", "BatchMode", "CheckHostIP", "ClearAllForwardings", "ConnectionAttempts",
    "DynamicForward", "EnableEscapeCommandline", "EscapeChar", "ExitOnForwardFailure",
    "ForkAfterAuthentication", "ForwardX11", "ForwardX11Timeout", "GatewayPorts",
    "HashKnownHosts", "IgnoreUnknown", "IPQoS", "LocalCommand", "LocalForward", "LogLevel",
    "LogVerbose", "NumberOfPasswordPrompts", "ObscureKeystrokeTiming", "PermitLocalCommand",
    "PermitRemoteOpen", "RemoteForward", "SessionType", "StdinNull", "StreamLocalBindMask",
    "StreamLocalBindUnlink", "SyslogFacility", "Tunnel", "TunnelDevice", "UpdateHostKeys",
    "UseKeychain", "VisualHostKey", "XAuthLocation", "NoHostAuthenticationForLocalhost"))

# Options asyncssh ignores that change how OpenSSH connects: what orchestra does instead.
INSTEAD = {o.lower(): (o, why) for o, why in (
    ("StrictHostKeyChecking", "host keys are always checked: an unknown or changed key is "
     "refused (record it with `ssh` once)"),
    ("KnownHostsCommand", "host keys come from the known_hosts files only"),
    ("VerifyHostKeyDNS", "host keys come from the known_hosts files only"),
    ("RevokedHostKeys", "revoked host keys are not checked"),
    ("ControlMaster", "orchestra opens and pools its own connections; it cannot reuse an "
     "OpenSSH master connection"),
    ("ControlPath", "orchestra opens and pools its own connections; it cannot reuse an "
     "OpenSSH master connection"),
    ("ControlPersist", "orchestra opens and pools its own connections"),
    ("ProxyUseFdpass", "the ProxyCommand's output is read as a stream"),
    ("PubkeyAcceptedAlgorithms", "asyncssh's default key algorithms are offered"),
    ("PubkeyAcceptedKeyTypes", "asyncssh's default key algorithms are offered"),
    ("HostbasedAcceptedAlgorithms", "asyncssh's default algorithms are offered"),
    ("SecurityKeyProvider", "security keys work through ssh-agent only"),
    ("RequiredRSASize", "asyncssh's own minimum RSA size applies"),
)}

_noted: set[str] = set()


@attrs.frozen
class HostConfig:
    """The settings that decide how a host is reached (None/empty: not set in the config)."""

    host: str  # the name asked for (a Host alias)
    hostname: str  # what is connected to
    port: int
    user: str | None
    proxy_jump: str | None
    proxy_command: str | None
    identity_files: tuple[str, ...]
    known_hosts: tuple[str, ...]
    identity_agent: str | None
    files: tuple[str, ...]  # the config files read (before Include)
    notes: tuple[str, ...] = ()  # one line per unsupported setting that applies to this host
    ciphers: bool = False  # the config chooses the ciphers itself


class _Reader(SSHClientConfig):
    """asyncssh's parser, recording the lines it would skip without a word."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.notes: list[str] = []

    def _where(self) -> str:
        return f"{self._path}, line {self._line_no}"

    def _instead(self, option: str, args: list[str]) -> None:
        value = " ".join(args)
        args.clear()
        name, why = INSTEAD[option.lower()]
        if name == "StrictHostKeyChecking" and value.lower() in ("yes", "true", "ask"):
            return  # what orchestra does anyway
        if name in ("ControlMaster", "ControlPersist") and value.lower() in ("no", "false"):
            return
        if name == "ControlPath" and value.lower() == "none":
            return
        self.notes.append(f"{self._where()}: {name} {value} is not supported (asyncssh "
                          f"ignores it): {why}")

    def _unknown(self, option: str, args: list[str]) -> None:
        args.clear()
        if option.lower() not in HARMLESS:
            line = linecache.getline(str(self._path), self._line_no).strip()
            name = line[:len(option)] if line.lower().startswith(option) else option
            self.notes.append(f"{self._where()}: {name} is not supported by orchestra's SSH "
                              "client (asyncssh); ignored")

    def _match(self, option: str, args: list[str]) -> None:
        words = [a.lower().lstrip("!") for a in args]
        if "exec" in words and "%" in "".join(args[words.index("exec") + 1:][:1]):
            before = args[:words.index("exec")]
            applies = True
            if before:  # does the block apply to this host, exec aside?
                super()._match(option, before)
                applies = self._matching
            if applies:
                self.notes.append(f"{self._where()}: Match exec with %-tokens is not supported "
                                  "(asyncssh runs the command without expanding them)")
        super()._match(option, args)


class _Handlers(dict):
    def __missing__(self, option: str) -> tuple[str, Any]:
        if option in INSTEAD:
            return INSTEAD[option][0], _Reader._instead
        return option, _Reader._unknown


# The notes hook into asyncssh's parser internals (verified with asyncssh 2.24): with another
# version whose internals differ, the config is read by asyncssh's own parser, without notes.
_HOOKED = isinstance(getattr(SSHClientConfig, "_handlers", None), dict)
if _HOOKED:
    _Reader._handlers = _Handlers(SSHClientConfig._handlers, match=("Match", _Reader._match))


def config_files(config: tuple[str, ...] | list[str]) -> list[Path]:
    """The files asyncssh reads: the given ones, else ~/.ssh/config if it can be read."""
    if config:
        return [Path(p).expanduser() for p in config]
    default = Path("~", ".ssh", "config").expanduser()
    return [default] if os.access(default, os.R_OK) else []


def resolve(host: str, port: int | None = None, user: str | None = None,
            config: tuple[str, ...] | list[str] = ()) -> HostConfig:
    """How `host` is reached according to the config files (arguments given win, as with
    `ssh -p -l`). Raises SSHError naming the file and line of a config asyncssh refuses."""
    files = config_files(config)
    try:
        local_user = getpass.getuser()
    except (KeyError, OSError):
        local_user = ""
    args = (local_user, user if user else (), host, port if port else ())
    parser = _Reader if _HOOKED else SSHClientConfig
    try:
        try:
            reader = parser.load(None, files, False, False, False, *args)
        except AttributeError:  # asyncssh's internals moved: its own parser, without notes
            parser = SSHClientConfig
            reader = parser.load(None, files, False, False, False, *args)
        if reader.has_match_final():  # OpenSSH reads the files again for `Match final`
            reader = parser.load(reader, files, True, False, True, *args)
    except ConfigParseError as error:
        raise SSHError(f"{host}: ssh config: {error} (not supported by orchestra's SSH client, "
                       f"asyncssh {asyncssh.__version__})") from None
    except OSError as error:
        raise SSHError(f"{host}: cannot read ssh config {error.filename}: "
                       f"{error.strerror}") from None

    def get(name: str) -> Any:
        return reader.get(name)

    notes = tuple(dict.fromkeys(getattr(reader, "notes", ())))
    for note in notes:
        if note not in _noted:
            _noted.add(note)
            log.warning("%s", note)
    return HostConfig(
        host=host, hostname=get("Hostname") or host, port=int(get("Port") or 22),
        user=get("User"), proxy_jump=get("ProxyJump"), proxy_command=get("ProxyCommand"),
        identity_files=tuple(get("IdentityFile") or ()),
        known_hosts=tuple(get("UserKnownHostsFile") or ()),
        identity_agent=get("IdentityAgent"), files=tuple(str(f) for f in files), notes=notes,
        ciphers=bool(get("Ciphers")))


def jump_hops(value: str) -> list[tuple[str | None, str, int | None]]:
    """ProxyJump `[user@]host[:port],...` (or ssh://user@host:port) as (user, host, port)."""
    hops = []
    for item in value.split(","):
        item = item.strip().removeprefix("ssh://")
        user, _, hostport = item.rpartition("@")
        host, port = hostport, None
        if hostport.startswith("["):  # [v6 address]:port
            host, _, rest = hostport[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif hostport.count(":") == 1:
            name, _, number = hostport.partition(":")
            if number.isdigit():
                host, port = name, int(number)
        if host:
            hops.append((user or None, host, port))
    return hops


# -- keys ---------------------------------------------------------------------------------------

DEFAULT_KEYS = ("id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ecdsa", "id_ed25519", "id_rsa",
                "id_dsa")


def candidate_keys(identities: tuple[str, ...], found: HostConfig | None) -> list[str]:
    """The key files a connection tries: the profile's, else the config's, else ~/.ssh/id_*."""
    if identities:
        return list(identities)
    if found is not None and found.identity_files:
        return list(found.identity_files)
    return [str(Path("~", ".ssh", name)) for name in DEFAULT_KEYS]


def is_encrypted(path: str) -> bool:
    try:
        asyncssh.read_private_key(os.path.expanduser(path))
    except asyncssh.KeyImportError as error:
        return "passphrase" in str(error).lower()
    except (OSError, ValueError):
        return False
    return False


async def agent_public_keys(agent_path: str | None) -> set[bytes] | None:
    """The public keys an ssh-agent holds, or None when there is no agent to ask."""
    path = agent_path or os.environ.get("SSH_AUTH_SOCK", "")
    if not path or path.lower() == "none":
        return None
    try:
        agent = await asyncssh.connect_agent(os.path.expanduser(path))
    except (OSError, asyncssh.Error, ValueError):
        return None
    try:
        return {key.public_data for key in await agent.get_keys()}
    except (OSError, asyncssh.Error, ValueError):
        return None
    finally:
        agent.close()


async def encrypted_key_problem(identities: tuple[str, ...], found: HostConfig | None) -> str:
    """After an authentication failure: why an encrypted key could not be used, or ''."""
    encrypted = [k for k in candidate_keys(identities, found) if is_encrypted(k)]
    if not encrypted:
        return ""
    held = await agent_public_keys(found.identity_agent if found else None)
    missing = []
    for key in encrypted:
        try:
            public = asyncssh.read_public_key(os.path.expanduser(key) + ".pub").public_data
        except (OSError, ValueError):
            public = None
        if held is None or public not in held:
            missing.append(key)
    if not missing:
        return ""
    where = ("no ssh-agent is running (SSH_AUTH_SOCK is not set)" if held is None
             else "the ssh-agent does not hold it")
    key = missing[0]
    return (f"the key {key} is encrypted (it has a passphrase) and {where}; orchestra never "
            f"asks for passphrases: load it into ssh-agent (`eval $(ssh-agent)`, "
            f"`ssh-add {key}`) and keep SSH_AUTH_SOCK set")
