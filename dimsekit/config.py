"""The node's configuration: one TOML file, every key with a default.

:func:`load` reads a file (or :func:`from_mapping` a dict) into a frozen
:class:`Config`.  Anything wrong stops start-up with a :class:`ConfigError`
whose message names the key and says how to fix it.  The keys of ``[node]``
and ``[[remote]]`` are a contract: add to them, don't rename them.

.. code-block:: toml

    [node]
    ae_title = "DIMSEKIT"        # --aet
    port = 11112                 # --port
    interface = ""               # address to listen on ("" = every IPv4 one; "::" every IPv6 one, and IPv4 too on Linux)
    data_dir = "dimsekit-data"   # --data-dir
    check_called_ae = false      # reject associations not addressed to ae_title
    allow_unknown_callers = true # false: only AEs in [[remote]] may associate
    decompress = "lossless"      # compressed instances a peer takes only uncompressed: "never", "lossy"
    max_decoded_mb = 1024        # an instance whose decoded pixel data would take more is not decompressed

    [limits]
    max_associations = 64        # more at once are rejected (transient, local limit)
    max_associations_per_ae = 0  # more at once from one calling AE title are rejected; 0 = no limit
    max_pdu = 16384              # our Maximum Length Received; 0 = no limit
    artim_timeout = 30           # seconds
    acse_timeout = 30
    idle_timeout = 60            # 0 = never drop an idle association
    dimse_timeout = 60           # seconds to wait for a DIMSE response, or for a peer to take anything
                                 #   of what we send (one that stopped reading is aborted); 0 = forever
    max_operations_invoked = 1   # asynchronous operations window (PS3.7 D.3.3.3): our requests
    max_operations_performed = 1 #   outstanding at once / the peer's performed at once; 0 = no limit
    max_dataset_size = 0         # bytes: a longer incoming data set aborts the association; 0 = no limit
    max_identifier_size = 16777216 # bytes: a longer C-FIND/C-GET/C-MOVE query is refused (A700/A701); 0 = no limit
    max_n_dataset_size = 67108864  # bytes: a longer N-CREATE/N-SET/N-ACTION/N-EVENT-REPORT data set is refused (0213)

    [[remote]]                   # known AEs: C-MOVE destinations, access list
    ae_title = "STORESCP"
    host = "127.0.0.1"
    port = 11113

    tls = false                  # associations to it use TLS ([tls])

    [tls]                        # TLS (PS3.15 B.1): see dimsekit.tls for every key
    certificate = "node.crt"     # with private_key: the node also listens for TLS on port 2762
    private_key = "node.key"
    ca_certificates = ["ca.crt"] # the CAs peers' certificates are checked against

    [plugins.storage]            # each plugin reads its own section

    [plugins.metrics]            # Prometheus metrics (dimsekit_plugins.metrics)
    port = 9464                  # 0 (the default): none

    [plugins.tracing]            # OpenTelemetry traces (dimsekit_plugins.tracing)
    exporter = "otlp"            # "none" (the default), "otlp", "console"
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dimsekit.errors import DimsekitError

if TYPE_CHECKING:
    from dimsekit.tls import TLSConfig

__all__ = ["Config", "NodeConfig", "Limits", "RemoteAE", "ConfigError", "load", "from_mapping", "check_ae_title",
           "valid_max_pdu", "MAX_PDU_RULE"]


class ConfigError(DimsekitError):
    """The configuration is wrong; the message names the key and the fix."""


#: what a Maximum Length Received may be (PS3.8 D.1: 0 is no limit), in words
MAX_PDU_RULE = "use 0 (no limit) or 4096 to 4294967295 bytes"


def valid_max_pdu(value: int) -> bool:
    """Whether ``value`` may be our Maximum Length Received (see :data:`MAX_PDU_RULE`)."""
    return value == 0 or 4096 <= value <= 0xFFFFFFFF


def check_ae_title(value: object, key: str) -> str:
    """Validate an AE title (PS3.5 AE VR: 1-16 chars of the default repertoire, no backslash,
    not all spaces) and return it stripped."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string AE title, got {value!r}")
    title = value.strip()
    if not 1 <= len(title) <= 16:
        raise ConfigError(f"{key}: AE title {value!r} must be 1 to 16 characters")
    if any(not (0x20 <= ord(c) < 0x7F) or c == "\\" for c in title):
        raise ConfigError(f"{key}: AE title {value!r} may hold only printable ASCII and no backslash")
    return title


#: [node] decompress: the policies (see NodeConfig.decompress)
DECOMPRESS_POLICIES = ("never", "lossless", "lossy")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """``[node]``: who we are and where we listen."""

    ae_title: str = "DIMSEKIT"
    port: int = 11112
    interface: str = ""
    data_dir: str = "dimsekit-data"
    check_called_ae: bool = False
    allow_unknown_callers: bool = True
    #: what the node does with a compressed instance a peer it sends to (a C-MOVE
    #: destination, a C-GET requestor) accepts only uncompressed: "lossless" (the default,
    #: as DCMTK's storescu) decompresses those in a lossless syntax (RLE, JPEG Lossless,
    #: JPEG-LS, JPEG 2000 lossless), "lossy" those in any syntax pydicom can decode,
    #: "never" none (the sub-operation fails)
    decompress: str = "lossless"
    #: the most decoded pixel data one instance may take to be decompressed, in MiB (held in
    #: memory while it is sent: a larger one's sub-operation fails, saying so)
    max_decoded_mb: int = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """``[limits]``: how much the node takes on, and how long it waits."""

    max_associations: int = 64
    #: associations at once from one calling AE title (0 = no limit): more are rejected
    #: as past ``max_associations`` are, so that one device opening associations in a
    #: loop (or a misconfigured router) cannot take every slot from the others
    max_associations_per_ae: int = 0
    max_pdu: int = 16384
    artim_timeout: float = 30.0
    acse_timeout: float = 30.0
    idle_timeout: float = 60.0
    dimse_timeout: float = 60.0
    #: asynchronous operations window (PS3.7 D.3.3.3), 0 = unlimited; 1/1 (the
    #: default) means the item is neither proposed nor answered
    max_operations_invoked: int = 1
    max_operations_performed: int = 1
    #: largest incoming data set in bytes (0 = no limit): a longer one is an A-ABORT
    #: as soon as it passes the limit (what arrives is spooled to disk, not memory)
    max_dataset_size: int = 0
    #: largest Identifier of an incoming C-FIND, C-GET or C-MOVE request in bytes (0 = no
    #: limit): a longer one is discarded as it arrives and refused with "Out of Resources"
    #: (A700H / A701H), the association goes on.  A real query is far smaller (a C-GET of
    #: 100,000 listed instances: ~7 MB); without a bound a peer's query could fill the disk
    #: it is spooled to (/tmp, often memory) and then memory, decoded
    max_identifier_size: int = 16 << 20
    #: largest data set of an incoming DIMSE-N message in bytes (0 = no limit): an
    #: N-EVENT-REPORT, N-SET, N-ACTION or N-CREATE request's is discarded as it arrives
    #: and refused with 0213H Resource Limitation, the association goes on; a response's
    #: (N-GET's too) aborts it.  The largest real ones: a Storage Commitment request for
    #: 100,000 instances (~13 MB), a print Image Box with a 4k x 5k 16-bit film (~40 MB)
    max_n_dataset_size: int = 64 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteAE:
    """``[[remote]]``: a known AE (C-MOVE destination, access list entry)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration."""

    node: NodeConfig = field(default_factory=NodeConfig)
    limits: Limits = field(default_factory=Limits)
    remotes: tuple[RemoteAE, ...] = ()
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str = "<defaults>"
    #: ``[tls]``, None when the file has no such section
    tls: TLSConfig | None = None

    def remote(self, ae_title: str) -> RemoteAE | None:
        """The known AE with this title, or None."""
        for remote in self.remotes:
            if remote.ae_title == ae_title.strip():
                return remote
        return None

    def override(self, **node_values: Any) -> Config:
        """A copy with some ``[node]`` values replaced (command-line options); None values ignored."""
        values = {k: v for k, v in node_values.items() if v is not None}
        if not values:
            return self
        merged = {**_asdict(self.node), **values}
        return replace(self, node=_section(NodeConfig, merged, "node"))


def _asdict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _section(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"[{prefix}] must be a table, got {values!r}")
    known = cls.__dataclass_fields__  # type: ignore[attr-defined]
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{prefix}.{key}: unknown key; the keys of [{prefix}] are: {', '.join(sorted(known))}"
            )
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        if name not in values:
            continue
        value = values[name]
        expected = _TYPES[str(f.type)]
        if isinstance(value, bool) and bool not in expected:
            raise ConfigError(f"{prefix}.{name}: expected {f.type}, got {value!r}")
        if not isinstance(value, expected):
            raise ConfigError(f"{prefix}.{name}: expected {f.type}, got {value!r}")
        kwargs[name] = float(value) if f.type == "float" else value
    obj = cls(**kwargs)
    _validate(obj, prefix)
    if isinstance(obj, NodeConfig | RemoteAE):
        obj = replace(obj, ae_title=obj.ae_title.strip())
    return obj


def _validate(obj: Any, prefix: str) -> None:
    if isinstance(obj, NodeConfig):
        check_ae_title(obj.ae_title, f"{prefix}.ae_title")
        if not 0 <= obj.port <= 65535:
            raise ConfigError(f"{prefix}.port: {obj.port} is not a TCP port (0-65535; 0 = any free port)")
        if obj.max_decoded_mb < 1:
            raise ConfigError(f"{prefix}.max_decoded_mb: give 1 or more MiB, got {obj.max_decoded_mb!r}")
        if obj.decompress not in DECOMPRESS_POLICIES:
            raise ConfigError(
                f"{prefix}.decompress: {obj.decompress!r} is not one of: {', '.join(DECOMPRESS_POLICIES)}"
            )
    if isinstance(obj, RemoteAE):
        check_ae_title(obj.ae_title, f"{prefix}.ae_title")
        if not obj.host.strip():
            raise ConfigError(f"{prefix}.host: give the host name or address of {obj.ae_title!r}")
        if not 1 <= obj.port <= 65535:
            raise ConfigError(f"{prefix}.port: {obj.port} is not a TCP port to connect to (1-65535)")
    if isinstance(obj, Limits):
        if obj.max_associations < 1:
            raise ConfigError("limits.max_associations: must be at least 1")
        if obj.max_associations_per_ae < 0:
            raise ConfigError("limits.max_associations_per_ae: use 0 (no limit) or a number of associations")
        if not valid_max_pdu(obj.max_pdu):
            raise ConfigError(f"limits.max_pdu: {MAX_PDU_RULE}")
        for name in ("artim_timeout", "acse_timeout", "idle_timeout", "dimse_timeout"):
            value = getattr(obj, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"limits.{name}: must be 0 or more seconds (a finite number), got {value!r}")
        if obj.artim_timeout == 0:
            raise ConfigError("limits.artim_timeout: must be more than 0 seconds")
        for name in ("max_operations_invoked", "max_operations_performed"):
            if not 0 <= getattr(obj, name) <= 0xFFFF:
                raise ConfigError(f"limits.{name}: use 0 (no limit) to 65535 operations")
        for name in ("max_dataset_size", "max_identifier_size", "max_n_dataset_size"):
            if getattr(obj, name) < 0:
                raise ConfigError(f"limits.{name}: use 0 (no limit) or a number of bytes")


def from_mapping(data: Mapping[str, Any], source: str = "<mapping>", *, base: str = "") -> Config:
    """Build a :class:`Config` from parsed TOML (a dict).

    :param base: the directory relative file names (``[tls]``'s) are found in;
        "" for the working directory.
    """
    allowed = {"node", "limits", "remote", "plugins", "tls"}
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{key}: unknown section; the sections are: {', '.join(sorted(allowed))}")
    node = _section(NodeConfig, data.get("node", {}), "node")
    limits = _section(Limits, data.get("limits", {}), "limits")
    raw_remotes = data.get("remote", [])
    if not isinstance(raw_remotes, list):
        raise ConfigError("remote: write each known AE as a [[remote]] table")
    remotes = []
    for index, entry in enumerate(raw_remotes):
        prefix = f"remote[{index}]"
        for required in ("ae_title", "host", "port"):
            if not isinstance(entry, Mapping) or required not in entry:
                raise ConfigError(f"{prefix}.{required}: missing; every [[remote]] needs ae_title, host and port")
        remotes.append(_section(RemoteAE, entry, prefix))
    titles = [r.ae_title for r in remotes]
    for title in titles:
        if titles.count(title) > 1:
            raise ConfigError(f"remote: AE title {title!r} is listed more than once; keep one entry")
    plugins = data.get("plugins", {})
    if not isinstance(plugins, Mapping) or any(not isinstance(v, Mapping) for v in plugins.values()):
        raise ConfigError("plugins: write each plugin's settings as a [plugins.NAME] table")
    tls = None
    if "tls" in data:
        from dimsekit.tls import from_section

        tls = from_section(data["tls"], base=base)
    for index, remote in enumerate(remotes):
        if remote.tls and tls is None:
            raise ConfigError(f"remote[{index}].tls: associations to {remote.ae_title!r} need a [tls] section "
                              "(ca_certificates to check its certificate, and ours if it asks for one)")
    return Config(
        node=node,
        limits=limits,
        remotes=tuple(remotes),
        plugins={k: dict(v) for k, v in plugins.items()},
        source=source,
        tls=tls,
    )


def load(path: str | Path | None) -> Config:
    """Read the TOML file at ``path`` (None: the defaults)."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file; check --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: the file must be UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror or exc}); check --config") from None
    return from_mapping(data, source=str(path), base=str(path.resolve().parent))
