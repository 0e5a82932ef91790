"""The SCU tools' TLS options (DCMTK's +tls, +tla, +cf, -ic), without sockets: how
they parse in every tool, the settings they make, the one-line errors, and that
``+`` options leave other words starting with ``+`` alone.

Over the network: tests/interop/test_cli_tls.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, error

from dimsekit.cli import _parser, main
from dimsekit.cli._scu import ToolAE, make_ae, tls_config
from dimsekit.config import ConfigError
from dimsekit.tls import TLSConfig
from dimsekit.uids import VERIFICATION
from tests.tlscerts import make_tls_files

#: every SCU tool, with what it needs besides HOST PORT
TOOLS = {
    "echo": [], "store": ["file.dcm"], "find": [], "get": [], "move": [], "mpps create": [],
    "mpps set": ["1.2.3"], "mpps get": ["1.2.3"], "commit": ["file.dcm"], "print": ["image.dcm"],
}


def parse(command: str, *options: str) -> Any:
    return _parser().parse_args([*command.split(), "127.0.0.1", "104", *TOOLS[command], *options])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory):
    return make_tls_files(tmp_path_factory.mktemp("certs"))


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", TOOLS)
def test_every_tool_takes_the_dcmtk_spellings_and_the_long_ones(command):
    short = parse(command, "+tls", "k.pem", "c.pem", "+cf", "ca1.pem", "+cf", "ca2.pem", "-ic")
    long = parse(command, "--tls", "k.pem", "c.pem", "--add-cert-file", "ca1.pem", "--add-cert-file", "ca2.pem",
                 "--ignore-peer-cert")
    for args in (short, long):
        assert args.tls_identity == ["k.pem", "c.pem"]
        assert args.tls_trust == ["ca1.pem", "ca2.pem"]
        assert args.tls_ignore_peer is True and args.anonymous_tls is False
    assert parse(command, "--enable-tls", "k", "c").tls_identity == ["k", "c"]  # DCMTK's long form
    for spelling in ("+tla", "--anonymous-tls"):
        args = parse(command, spelling, "+cf", "ca.pem")
        assert args.anonymous_tls is True and args.tls_identity is None
    plain = parse(command)
    assert (plain.tls_identity, plain.anonymous_tls, plain.tls_trust, plain.tls_ignore_peer,
            plain.tls_verify_hostname) == (None, False, [], False, False)


@pytest.mark.parametrize(("options", "words"), [
    (["+tls", "k.pem"], "argument +tls/--tls/--enable-tls: expected 2 arguments"),
    (["+tls", "k", "c", "+tla"], "argument +tla/--anonymous-tls: not allowed with argument +tls/--tls"),
    (["+cf"], "argument +cf/--add-cert-file: expected one argument"),
])
def test_malformed_tls_options_are_usage_errors(capsys, options, words):
    with pytest.raises(SystemExit) as exited:
        parse("echo", *options)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


def test_words_starting_with_plus_stay_arguments():
    """'+' is an option prefix now (for +tls): only the options the tool has are taken as options."""
    assert parse("store", "+1.dcm", "+t").paths == ["file.dcm", "+1.dcm", "+t"]
    assert _parser().parse_args(["print", "h", "1", "a.dcm", "--label", "+A", "--medium", "+x"]).label == "+A"
    assert parse("find", "-k", "+x", "-k", "PatientName=+").keys == ["+x", "PatientName=+"]
    assert parse("mpps set", "-k", "+1").key == ["+1"]
    assert _parser().parse_args(["mpps", "set", "h", "1", "+1.2"]).uid == "+1.2"
    assert parse("echo", "-r", "+5").repeat == 5
    args = parse("echo", "+tls", "+key.pem", "+cert.pem")  # values of +tls may start with '+' too
    assert args.tls_identity == ["+key.pem", "+cert.pem"]


def test_a_parser_without_plus_options_gets_the_long_forms():
    import argparse

    from dimsekit.cli import add_common_arguments

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    args = parser.parse_args(["h", "1", "--tls", "k", "c", "--add-cert-file", "ca", "-ic"])
    assert (args.tls_identity, args.tls_trust, args.tls_ignore_peer) == (["k", "c"], ["ca"], True)
    assert tls_config(args) == TLSConfig(certificate="c", private_key="k", ca_certificates=("ca",), verify_peer=False)


def test_the_options_are_in_every_tools_help(capsys):
    for command in TOOLS:
        with pytest.raises(SystemExit):
            _parser().parse_args([*command.split(), "--help"])
        text = capsys.readouterr().out
        for option in ("+tls KEY CERT", "--tls KEY CERT", "+tla, --anonymous-tls", "+cf FILE, --add-cert-file FILE",
                       "-ic, --ignore-peer-cert", "--verify-hostname", "--tls-ciphers",
                       "+crl FILE, --add-crl-file FILE", "+cra, --enable-crl-all"):
            assert option in text, (command, option)


# -- the settings they make -------------------------------------------------------------------


def test_tls_config_from_the_options():
    assert tls_config(parse("echo")) is None
    config = tls_config(parse("echo", "+tls", "k.pem", "c.pem", "+cf", "a.pem", "+cf", "b.pem"))
    assert config == TLSConfig(certificate="c.pem", private_key="k.pem", ca_certificates=("a.pem", "b.pem"),
                               verify_peer=True, verify_hostname=False)
    config = tls_config(parse("echo", "+tla", "-ic"))
    assert (config.has_identity, config.verify_peer, config.ca_certificates) == (False, False, ())
    config = tls_config(parse("echo", "+tla", "+cf", "a.pem", "--verify-hostname"))
    assert (config.verify_peer, config.verify_hostname) == (True, True)
    assert config.ciphers == "forward-secret"
    assert tls_config(parse("echo", "+tla", "-ic", "--tls-ciphers", "compatible")).ciphers == "compatible"
    assert config.crls == ()
    config = tls_config(parse("echo", "+tla", "+cf", "a.pem", "+crl", "a.crl", "--add-crl-file", "b.crl"))
    assert (config.crls, config.crl_check) == (("a.crl", "b.crl"), "leaf")
    assert tls_config(parse("echo", "+tla", "+cf", "a.pem", "+crl", "a.crl", "+cra")).crl_check == "chain"


@pytest.mark.parametrize(("options", "words"), [
    (["+tls", "k", "c"], "give +cf FILE (the CA or the peer's certificate to trust), or -ic not to check it"),
    (["+tla"], "give +cf FILE"),
    (["+cf", "ca.pem"], "+cf is for TLS: give +tls KEY CERT or +tla too"),
    (["-ic", "--verify-hostname"], "-ic and --verify-hostname are for TLS"),
    (["+tla", "-ic", "--verify-hostname"], "--verify-hostname checks the peer's certificate, -ic does not"),
    (["--tls-ciphers", "compatible"], "--tls-ciphers is for TLS: give +tls KEY CERT or +tla too"),
    (["+crl", "a.crl"], "+crl is for TLS: give +tls KEY CERT or +tla too"),
    (["+tla", "+cf", "a.pem", "+cra"], "+cra checks the chain against revocation lists: give them with +crl FILE"),
    (["+tla", "-ic", "+crl", "a.crl"], "+crl checks the peer's certificate, -ic does not check it"),
])
def test_options_that_do_not_go_together(options, words):
    with pytest.raises(ConfigError) as caught:
        tls_config(parse("echo", *options))
    assert words in str(caught.value)


@pytest.mark.parametrize("command", TOOLS)
def test_main_says_it_in_one_line_and_exits_2_before_anything_runs(capsys, command):
    argv = [*command.split(), "127.0.0.1", "104", *TOOLS[command], "+tls", "k.pem", "c.pem"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err == (f"dimsekit {command}: TLS checks the peer's certificate: give +cf FILE (the CA or the peer's "
                   "certificate to trust), or -ic not to check it\n")
    assert out == ""


def test_files_that_cannot_be_used_are_one_line_naming_the_file(capsys, certs, tmp_path):
    def run(*options: Any) -> str:
        assert main(["echo", "127.0.0.1", "104", *map(str, options)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("dimsekit echo: "), err
        return err

    missing = tmp_path / "missing.key"
    err = run("+tls", missing, certs.client_cert, "+cf", certs.ca)
    assert "cannot read" in err and str(missing) in err
    err = run("+tls", certs.client_key, certs.client_cert, "+cf", tmp_path / "nope.crt")
    assert "cannot read" in err and "nope.crt" in err
    err = run("+tls", certs.server_key, certs.client_cert, "+cf", certs.ca)
    assert "is not the key of the certificate" in err
    err = run("+tla", "+cf", certs.client_key)
    assert "holds no PEM certificate" in err


# -- the AE the tools make --------------------------------------------------------------------


class _Refusing:
    def connect(self, factory: Any) -> defer.Deferred:
        return defer.fail(error.ConnectionRefusedError())


def test_the_tools_ae_opens_every_association_with_tls(certs):
    from twisted.internet import reactor

    args = parse("echo", "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca))
    ae = make_ae(reactor, args)
    assert isinstance(ae, ToolAE) and ae.tls is not None and ae.config.tls == tls_config(args)
    dialled: list[tuple[str, int, float]] = []

    def client_endpoint(reactor: Any, host: str, port: int, timeout: float = 30.0) -> Any:
        dialled.append((host, port, timeout))
        return _Refusing()

    ae.tls.client_endpoint = client_endpoint  # type: ignore[method-assign]
    failures: list[Any] = []
    ae.associate("127.0.0.1", 104, contexts=[VERIFICATION], connect_timeout=7).addErrback(failures.append)
    assert dialled == [("127.0.0.1", 104, 7)]
    assert failures and failures[0].check(error.ConnectionRefusedError)


def test_without_tls_options_the_tools_ae_has_no_tls():
    from twisted.internet import reactor

    ae = make_ae(reactor, parse("echo"))
    assert ae.tls is None and ae.config.tls is None


def test_relative_file_names_are_found_from_the_current_directory(certs, monkeypatch):
    monkeypatch.chdir(certs.directory)
    from twisted.internet import reactor

    ae = make_ae(reactor, parse("echo", "+tls", "client.key", "client.crt", "+cf", "ca.crt"))
    assert ae.tls is not None and ae.tls.config.path("ca.crt") == Path("ca.crt")
