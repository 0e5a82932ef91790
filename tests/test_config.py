"""The configuration: defaults, the TOML contract, errors that name the key, twistd options."""

from __future__ import annotations

import re
import textwrap

import pytest
from twisted.python import usage

from dimsekit import config as config_module
from dimsekit.config import (
    Config,
    ConfigError,
    Limits,
    NodeConfig,
    RemoteAE,
    check_ae_title,
    from_mapping,
    load,
)
from dimsekit.tap import Options

#: The keys DESIGN.md makes a contract ("add to them, don't rename them").
CONTRACT = """
[node]
ae_title = "DIMSEKIT"        # --aet
port = 11112                 # --port
data_dir = "dimsekit-data"   # --data-dir
check_called_ae = false      # reject associations not addressed to ae_title
allow_unknown_callers = true # false: only AEs in [[remote]] may associate

[[remote]]                   # known AEs: C-MOVE destinations, access list
ae_title = "STORESCP"
host = "127.0.0.1"
port = 11113

[plugins.storage]            # each plugin reads its own section
"""


def write(tmp_path, text: str, name: str = "dimsekit.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- defaults ------------------------------------------------------------------------------


def test_defaults():
    config = Config()
    assert config.node == NodeConfig(
        ae_title="DIMSEKIT",
        port=11112,
        interface="",
        data_dir="dimsekit-data",
        check_called_ae=False,
        allow_unknown_callers=True,
    )
    assert config.limits == Limits(
        max_associations=64,
        max_pdu=16384,
        artim_timeout=30.0,
        acse_timeout=30.0,
        idle_timeout=60.0,
        dimse_timeout=60.0,
    )
    assert config.remotes == ()
    assert dict(config.plugins) == {}
    assert config.source == "<defaults>"


def test_load_none_and_empty_file_give_the_defaults(tmp_path):
    assert load(None) == Config()
    loaded = load(write(tmp_path, ""))
    assert (loaded.node, loaded.limits, loaded.remotes) == (NodeConfig(), Limits(), ())
    assert loaded.source.endswith("dimsekit.toml")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().node.port = 1  # type: ignore[misc]


# -- the contract --------------------------------------------------------------------------


def test_design_contract_parses(tmp_path):
    config = load(write(tmp_path, CONTRACT))
    assert config.node.ae_title == "DIMSEKIT"
    assert config.node.port == 11112
    assert config.node.data_dir == "dimsekit-data"
    assert config.node.check_called_ae is False
    assert config.node.allow_unknown_callers is True
    assert config.remotes == (RemoteAE(ae_title="STORESCP", host="127.0.0.1", port=11113),)
    assert config.remote("STORESCP") == config.remotes[0]
    assert config.remote(" STORESCP ") == config.remotes[0]
    assert config.remote("NOBODY") is None
    assert dict(config.plugins) == {"storage": {}}


def test_documented_example_parses():
    """The TOML example in dimsekit.config's docstring is valid and complete."""
    doc = config_module.__doc__
    block = doc[doc.index(".. code-block:: toml") :].split("\n", 1)[1]
    example = from_mapping(_toml(textwrap.dedent(block)))
    assert example.limits == Limits()
    assert example.node == NodeConfig()
    # Every field of every section is shown in the example.
    for section, cls in (("node", NodeConfig), ("limits", Limits)):
        for name in cls.__dataclass_fields__:
            assert re.search(rf"^\s*{name}\s*=", block, re.M), f"{section}.{name} is not in the example"


def _toml(text: str):
    import tomllib

    return tomllib.loads(text)


@pytest.mark.parametrize(
    ("toml", "check"),
    [
        ('[node]\nae_title = "NODE"', lambda c: c.node.ae_title == "NODE"),
        ('[node]\nae_title = "  PADDED "', lambda c: c.node.ae_title == "PADDED"),
        ("[node]\nport = 104", lambda c: c.node.port == 104),
        ("[node]\nport = 0", lambda c: c.node.port == 0),  # any free port (tests)
        ('[node]\ninterface = "127.0.0.1"', lambda c: c.node.interface == "127.0.0.1"),
        ('[node]\ndata_dir = "/srv/dicom"', lambda c: c.node.data_dir == "/srv/dicom"),
        ("[node]\ncheck_called_ae = true", lambda c: c.node.check_called_ae is True),
        ("[node]\nallow_unknown_callers = false", lambda c: c.node.allow_unknown_callers is False),
        ("[limits]\nmax_associations = 1", lambda c: c.limits.max_associations == 1),
        ("[limits]\nmax_pdu = 0", lambda c: c.limits.max_pdu == 0),
        ("[limits]\nmax_pdu = 4096", lambda c: c.limits.max_pdu == 4096),
        ("[limits]\nartim_timeout = 5", lambda c: c.limits.artim_timeout == 5.0),
        ("[limits]\nacse_timeout = 2.5", lambda c: c.limits.acse_timeout == 2.5),
        ("[limits]\nidle_timeout = 0", lambda c: c.limits.idle_timeout == 0.0),
        ("[limits]\ndimse_timeout = 0", lambda c: c.limits.dimse_timeout == 0.0),
        ("[limits]\nmax_dataset_size = 2147483648", lambda c: c.limits.max_dataset_size == 2**31),
        ("", lambda c: c.limits.max_identifier_size == 16 * 1024 * 1024),
        ("", lambda c: c.limits.max_associations_per_ae == 0),
        ("[limits]\nmax_associations_per_ae = 4", lambda c: c.limits.max_associations_per_ae == 4),
        ("[limits]\nmax_identifier_size = 0", lambda c: c.limits.max_identifier_size == 0),
        ("", lambda c: c.limits.max_n_dataset_size == 64 * 1024 * 1024),
        ("[limits]\nmax_n_dataset_size = 0", lambda c: c.limits.max_n_dataset_size == 0),
        (
            '[[remote]]\nae_title = "A"\nhost = "h"\nport = 1\ntls = true\n[tls]\nverify_peer = false',
            lambda c: c.remotes[0].tls is True,
        ),
        (
            '[[remote]]\nae_title = " A "\nhost = "h"\nport = 1',
            lambda c: c.remotes[0].ae_title == "A",
        ),
        ('[plugins.storage]\nfsync = false', lambda c: c.plugins["storage"] == {"fsync": False}),
    ],
)
def test_each_key_parses(tmp_path, toml, check):
    config = load(write(tmp_path, toml))
    assert check(config)
    assert isinstance(config.limits.artim_timeout, float)


# -- bad values name the key ----------------------------------------------------------------

_REMOTE = '[[remote]]\nae_title = "A"\nhost = "h"\nport = 1\n'

BAD = [
    # wrong types
    ('[node]\nport = "104"', "node.port"),
    ("[node]\nport = 104.0", "node.port"),
    ("[node]\nport = true", "node.port"),
    ("[node]\nae_title = 3", "node.ae_title"),
    ('[node]\ncheck_called_ae = "yes"', "node.check_called_ae"),
    ("[node]\nallow_unknown_callers = 1", "node.allow_unknown_callers"),
    ("[node]\ndata_dir = 1", "node.data_dir"),
    ('[limits]\nmax_pdu = "16k"', "limits.max_pdu"),
    ("[limits]\nmax_associations = 2.0", "limits.max_associations"),
    ("[limits]\nartim_timeout = true", "limits.artim_timeout"),
    ('[limits]\ndimse_timeout = "60"', "limits.dimse_timeout"),
    ("node = 3", "node"),
    ("[[node]]\nport = 1", "node"),
    ('remote = "A"', "remote"),
    ("plugins = 3", "plugins"),
    ("[plugins]\nstorage = 3", "plugins"),
    # unknown keys and sections
    ("[node]\naet = \"X\"", "node.aet"),
    ("[limits]\nmax_pdu_size = 1", "limits.max_pdu_size"),
    ('[[remote]]\nae_title = "A"\nhost = "h"\nport = 1\nname = "x"', "remote[0].name"),
    ("[nodes]\nport = 1", "nodes"),
    # AE titles
    ('[node]\nae_title = ""', "node.ae_title"),
    ('[node]\nae_title = "    "', "node.ae_title"),
    ('[node]\nae_title = "SEVENTEEN_CHARS_X"', "node.ae_title"),
    ('[node]\nae_title = "BACK\\\\SLASH"', "node.ae_title"),
    ('[node]\nae_title = "TAB\\tTAB"', "node.ae_title"),
    ('[node]\nae_title = "ÄRZTE"', "node.ae_title"),
    ('[[remote]]\nae_title = ""\nhost = "h"\nport = 1', "remote[0].ae_title"),
    # ports
    ("[node]\nport = -1", "node.port"),
    ("[node]\nport = 65536", "node.port"),
    ('[[remote]]\nae_title = "A"\nhost = "h"\nport = 70000', "remote[0].port"),
    ('[[remote]]\nae_title = "A"\nhost = "h"\nport = 0', "remote[0].port"),
    # remotes
    (_REMOTE + _REMOTE, "remote"),
    (_REMOTE + '[[remote]]\nae_title = " A"\nhost = "other"\nport = 2\n', "remote"),
    ('[[remote]]\nhost = "h"\nport = 1', "remote[0].ae_title"),
    ('[[remote]]\nae_title = "A"\nport = 1', "remote[0].host"),
    ('[[remote]]\nae_title = "A"\nhost = "h"', "remote[0].port"),
    (_REMOTE + '[[remote]]\nae_title = "B"\nhost = "h"', "remote[1].port"),
    ('[[remote]]\nae_title = "A"\nhost = ""\nport = 1', "remote[0].host"),
    # limits
    ("[limits]\nmax_pdu = 4095", "limits.max_pdu"),
    ("[limits]\nmax_dataset_size = -1", "limits.max_dataset_size"),
    ("[limits]\nmax_identifier_size = -1", "limits.max_identifier_size"),
    ("[limits]\nmax_n_dataset_size = -1", "limits.max_n_dataset_size"),
    ("[limits]\nmax_associations_per_ae = -1", "limits.max_associations_per_ae"),
    ('[limits]\nmax_dataset_size = "2G"', "limits.max_dataset_size"),
    ("[limits]\nmax_pdu = 1", "limits.max_pdu"),
    ("[limits]\nmax_pdu = -1", "limits.max_pdu"),
    ("[limits]\nmax_pdu = 4294967296", "limits.max_pdu"),
    ("[limits]\nmax_associations = 0", "limits.max_associations"),
    ("[limits]\nartim_timeout = 0", "limits.artim_timeout"),
    ("[limits]\nacse_timeout = -1", "limits.acse_timeout"),
    ("[limits]\nidle_timeout = -0.5", "limits.idle_timeout"),
    ("[limits]\ndimse_timeout = nan", "limits.dimse_timeout"),
    ("[limits]\nartim_timeout = inf", "limits.artim_timeout"),
]


@pytest.mark.parametrize(("toml", "key"), BAD, ids=[key + ":" + toml.split("\n")[-1] for toml, key in BAD])
def test_bad_value_names_the_key(tmp_path, toml, key):
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, toml))
    message = str(info.value)
    assert message.startswith(f"{key}:") or f"[{key}]" in message, message
    assert len(message) > len(key) + 10  # says what is wrong, not just where


def test_unknown_key_lists_the_known_ones():
    with pytest.raises(ConfigError, match="ae_title.*port"):
        from_mapping({"node": {"aet": "X"}})


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml.*no such configuration file.*--config"):
        load(missing)


def test_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load(write(tmp_path, "[node\nport = 1", "bad.toml"))


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[node]\nae_title = "\u00c4RZTE"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.toml"):
        load(path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path.name)):
        load(tmp_path)


def test_check_ae_title():
    assert check_ae_title(" NODE ", "k") == "NODE"
    assert check_ae_title("A" * 16, "k") == "A" * 16
    with pytest.raises(ConfigError, match="^k:"):
        check_ae_title(None, "k")


# -- override (command-line options) ---------------------------------------------------------


def test_override_replaces_node_values_only():
    base = from_mapping({"node": {"port": 1000, "ae_title": "BASE"}, "limits": {"max_associations": 3}})
    changed = base.override(port=2000, ae_title=None, data_dir="/data")
    assert (changed.node.port, changed.node.ae_title, changed.node.data_dir) == (2000, "BASE", "/data")
    assert changed.limits.max_associations == 3
    assert base.node.port == 1000  # the original is untouched


def test_override_with_nothing_is_the_same_config():
    config = Config()
    assert config.override() is config
    assert config.override(port=None) is config


def test_override_validates():
    with pytest.raises(ConfigError, match="^node.port:"):
        Config().override(port=70000)
    with pytest.raises(ConfigError, match="^node.ae_title:"):
        Config().override(ae_title="X" * 17)
    with pytest.raises(ConfigError, match="^node.nope:"):
        Config().override(nope=1)


def test_override_strips_the_ae_title():
    assert Config().override(ae_title="  NODE ").node.ae_title == "NODE"


# -- twistd options --------------------------------------------------------------------------


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def test_options_without_arguments_give_the_defaults():
    config = parse()["config_obj"]
    assert config.node == NodeConfig()
    assert config.limits == Limits()


def test_options_read_the_config_file(tmp_path):
    path = write(tmp_path, '[node]\nae_title = "FILE"\nport = 1000\n[limits]\nmax_associations = 2')
    config = parse("--config", str(path))["config_obj"]
    assert (config.node.ae_title, config.node.port, config.limits.max_associations) == ("FILE", 1000, 2)


def test_options_override_the_config_file(tmp_path):
    path = write(tmp_path, '[node]\nae_title = "FILE"\nport = 1000\ndata_dir = "a"\ninterface = "::"')
    config = parse(
        "--config", str(path), "--port", "104", "--aet", "OPTION", "--data-dir", "b", "--interface", "127.0.0.1"
    )["config_obj"]
    assert (config.node.port, config.node.ae_title, config.node.data_dir, config.node.interface) == (
        104,
        "OPTION",
        "b",
        "127.0.0.1",
    )


def test_short_options(tmp_path):
    path = write(tmp_path, "")
    config = parse("-c", str(path), "-p", "105", "-a", "SHORT")["config_obj"]
    assert (config.node.port, config.node.ae_title) == (105, "SHORT")


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[node]\nport = 99999", "node.port"),
        ('[limits]\nmax_pdu = "big"', "limits.max_pdu"),
        ("[node]\nwhat = 1", "node.what"),
    ],
)
def test_bad_config_file_is_a_usage_error_naming_the_key(tmp_path, toml, key):
    path = write(tmp_path, toml)
    with pytest.raises(usage.UsageError, match=re.escape(key)):
        parse("--config", str(path))


def test_missing_config_file_is_a_usage_error(tmp_path):
    with pytest.raises(usage.UsageError, match="no such configuration file"):
        parse("--config", str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (("--port", "70000"), "node.port"),
        (("--aet", "AN_AE_TITLE_TOO_LONG"), "node.ae_title"),
        (("--aet", "   "), "node.ae_title"),
    ],
)
def test_bad_option_is_a_usage_error_naming_the_key(argv, key):
    with pytest.raises(usage.UsageError, match=re.escape(key)):
        parse(*argv)


def test_port_must_be_a_number():
    with pytest.raises(usage.UsageError):
        parse("--port", "eleven")


def test_a_plugin_refusing_its_section_stops_the_node_with_one_line(tmp_path):
    """Checked when the node is made (twistd has parsed the options by then):
    a SystemExit with the line, which twistd lets out as it is -- a UsageError
    from makeService came out as a traceback."""
    from dimsekit.tap import makeService

    path = write(tmp_path, "[plugins.storage]\nno_such_key = 1\n")
    options = parse("--config", str(path), "--port", "0", "--data-dir", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exited:
        makeService(options)
    assert isinstance(exited.value.code, str)
    assert "plugins.storage.no_such_key: unknown key" in exited.value.code



@pytest.mark.parametrize("endpoint", ["ssl:11112:privateKey=key.pem", "SSL:0"])
def test_an_ssl_endpoint_is_refused_for_the_tls_table(tmp_path, endpoint):
    """Twisted's ssl: listener would check no client certificate: the node says to use [tls]."""
    from dimsekit.tap import makeService

    options = parse("--endpoint", endpoint, "--data-dir", str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exited:
        makeService(options)
    assert isinstance(exited.value.code, str)
    assert "for TLS use the [tls] table" in exited.value.code
