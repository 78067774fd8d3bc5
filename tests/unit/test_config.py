"""Settings: one spelling in keyword arguments, the environment and TOML; clear refusals."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from eventbus import (
    ConfigurationError,
    ConfigurationWarning,
    EventBus,
    MissingDependencyError,
    UnknownTransportError,
)
from eventbus._config import load_settings
from eventbus.transports import MemoryTransport, _resolve, transport_class, transport_from_url


def test_an_argument_beats_the_environment_which_beats_the_files(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.eventbus]\ntransport_url = "nats://127.0.0.1:4222"\ngroup = "from-pyproject"\n'
        "max_deliveries = 4\n"
    )
    (tmp_path / "eventbus.toml").write_text('group = "from-eventbus-toml"\n')
    environ = {"EVENTBUS_TRANSPORT_URL": "redis://127.0.0.1:6379/0"}
    settings = load_settings({"transport_url": None}, environ=environ, directory=tmp_path)
    assert settings.transport_url == "redis://127.0.0.1:6379/0"
    assert settings.group == "from-eventbus-toml"
    assert settings.max_deliveries == 4
    assert settings.sources == {
        "transport_url": "the environment variable EVENTBUS_TRANSPORT_URL",
        "group": f"group in {tmp_path / 'eventbus.toml'}",
        "max_deliveries": f"max_deliveries in [tool.eventbus] of {tmp_path / 'pyproject.toml'}",
    }
    chosen = load_settings({"group": "billing"}, environ=environ, directory=tmp_path)
    assert chosen.group == "billing"


def test_without_any_setting_there_is_no_transport(tmp_path: Path) -> None:
    settings = load_settings(environ={}, directory=tmp_path)
    assert settings.transport_url is None
    assert settings.group == "default"
    assert settings.max_deliveries == 10


def test_the_environment_gives_numbers_as_text(tmp_path: Path) -> None:
    settings = load_settings(environ={"EVENTBUS_MAX_DELIVERIES": "3"}, directory=tmp_path)
    assert settings.max_deliveries == 3


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('[tool.eventbus]\ntransport = "redis://x"\n', "unknown eventbus setting 'transport'"),
        ("[tool.eventbus]\ngroup = 3\n", "group .* must be a non-empty string"),
        ("[tool.eventbus]\nmax_deliveries = 0\n", "max_deliveries .* int >= 1"),
        ("[tool.eventbus]\nmax_deliveries = true\n", "max_deliveries .* int >= 1"),
        ("[tool.eventbus\n", "cannot read eventbus settings"),
        ('[tool]\neventbus = "x"\n', r"\[tool.eventbus\] .* must be a table"),
    ],
)
def test_bad_settings_in_a_file_are_refused_naming_the_file(
    tmp_path: Path, document: str, message: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(document)
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_settings(environ={}, directory=tmp_path)
    assert "pyproject.toml" in str(caught.value)


def test_a_bad_environment_value_is_refused_naming_the_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="EVENTBUS_"):
        load_settings(environ={"EVENTBUS_MAX_DELIVERIES": "many"}, directory=tmp_path)
    with pytest.raises(ConfigurationError, match="non-empty"):
        load_settings(environ={"EVENTBUS_GROUP": "  "}, directory=tmp_path)


# -- names that are not settings ---------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("EVENTBUS_TRANSPRT_URL", "EVENTBUS_TRANSPORT_URL"),
        ("EVENTBUS_TRANSPORT", "EVENTBUS_TRANSPORT_URL"),
        ("eventbus_transport_url", "EVENTBUS_TRANSPORT_URL"),
        ("EVENTBUS_GROUPS", "EVENTBUS_GROUP"),
        ("EVENTBUS_MAX_DELIVERY", "EVENTBUS_MAX_DELIVERIES"),
        ("EVENTBUS_WORKERS", "EVENTBUS_WORKER"),
    ],
)
def test_a_misspelt_environment_variable_is_refused_with_what_it_meant(
    tmp_path: Path, variable: str, meant: str
) -> None:
    environ = {variable: "redis://app:canary-pw@127.0.0.1:6379/0"}
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ=environ, directory=tmp_path)
    text = str(caught.value)
    assert f"{variable} (did you mean {meant}?)" in text
    assert "EVENTBUS_IGNORE" in text  # the way out, if it is another tool's
    assert "canary-pw" not in text  # values are never shown


def test_the_bus_refuses_a_misspelt_transport_variable_instead_of_staying_in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVENTBUS_TRANSPORT_URL", raising=False)
    monkeypatch.setenv("EVENTBUS_TRANSPRT_URL", "memory://")
    with pytest.raises(ConfigurationError, match="did you mean EVENTBUS_TRANSPORT_URL"):
        EventBus()


def test_an_environment_variable_like_no_setting_is_warned_about_and_ignored(
    tmp_path: Path,
) -> None:
    environ = {
        "EVENTBUS_SERVICE_HOST": "10.0.0.7",  # Kubernetes, for a service named eventbus
        "EVENTBUS_PORT": "tcp://10.0.0.7:6379",
        "EVENTBUS_GROUP": "billing",
    }
    with pytest.warns(ConfigurationWarning) as caught:
        settings = load_settings(environ=environ, directory=tmp_path)
    assert settings.group == "billing"
    [warning] = caught
    text = str(warning.message)
    assert "EVENTBUS_PORT, EVENTBUS_SERVICE_HOST" in text
    assert "EVENTBUS_IGNORE" in text
    assert "10.0.0.7" not in text
    assert warning.filename == __file__  # it points at the caller, not into eventbus


def test_the_bus_warns_about_a_stray_variable_at_the_line_that_builds_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVENTBUS_URL", "redis://127.0.0.1:6379/0")
    with pytest.warns(ConfigurationWarning, match="EVENTBUS_URL is not an eventbus setting"):
        bus = EventBus()
    bus.close()


def test_eventbus_ignore_names_the_variables_of_other_tools(tmp_path: Path) -> None:
    environ = {
        "EVENTBUS_WORKERS": "4",  # close to a setting, but another tool's
        "EVENTBUS_SERVICE_HOST": "10.0.0.7",
        "EVENTBUS_SERVICE_PORT_HTTP": "80",
        "EVENTBUS_IGNORE": "EVENTBUS_WORKERS, EVENTBUS_SERVICE_*",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings = load_settings(environ=environ, directory=tmp_path)
    assert settings.worker is True


def test_the_names_eventbus_itself_uses_outside_the_settings_pass_quietly(tmp_path: Path) -> None:
    environ = {
        "EVENTBUS_APP": "myapp:bus",  # the command line's --app
        "EVENTBUS_TEST_POSTGRESQL_URL": "postgresql://127.0.0.1/test",  # the test suite's
        "EVENTBUS_BENCH_POSTGRESQL_URL": "postgresql://127.0.0.1/test",  # the benchmarks'
        "EVENTBUSY": "not ours at all",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_settings(environ=environ, directory=tmp_path)


def test_a_misspelt_key_in_a_file_gets_what_it_meant(tmp_path: Path) -> None:
    (tmp_path / "eventbus.toml").write_text('transprt_url = "redis://127.0.0.1:6379/0"\n')
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environ={}, directory=tmp_path)
    assert "'transprt_url' (did you mean 'transport_url'?)" in str(caught.value)
    assert str(tmp_path / "eventbus.toml") in str(caught.value)


# -- a bad transport URL says where it came from ------------------------------------------


def test_a_bad_transport_url_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVENTBUS_TRANSPORT_URL", "rediz://app:canary-pw@127.0.0.1:6379/0")
    with pytest.raises(UnknownTransportError) as caught:
        EventBus()
    text = str(caught.value)
    assert text.startswith("the environment variable EVENTBUS_TRANSPORT_URL: ")
    assert "did you mean 'redis://'" in text
    assert "canary-pw" not in text


def test_a_bad_transport_url_from_a_file_names_the_file_and_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVENTBUS_TRANSPORT_URL", raising=False)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.eventbus]\ntransport_url = "memory://x?prefix=shop"\n'
    )
    with pytest.raises(ConfigurationError) as caught:
        EventBus()
    assert str(caught.value).startswith(
        f"transport_url in [tool.eventbus] of {tmp_path / 'pyproject.toml'}: "
    )


def test_a_password_in_the_transport_url_stays_out_of_the_settings_repr(tmp_path: Path) -> None:
    settings = load_settings(
        {"transport_url": "amqp://guest:canary-pw@127.0.0.1:5672/"}, environ={}, directory=tmp_path
    )
    assert "canary-pw" not in repr(settings)


def test_the_bus_takes_its_transport_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVENTBUS_TRANSPORT_URL", "memory://from-env")
    monkeypatch.setenv("EVENTBUS_GROUP", "billing")
    bus = EventBus()
    assert isinstance(bus.transport, MemoryTransport)
    assert bus._link is not None
    assert bus._link.group == "billing"
    bus.close()


def test_the_bus_takes_its_transport_from_pyproject(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVENTBUS_TRANSPORT_URL", raising=False)
    (tmp_path / "pyproject.toml").write_text('[tool.eventbus]\ntransport_url = "memory://"\n')
    bus = EventBus()
    assert isinstance(bus.transport, MemoryTransport)
    bus.close()


def test_no_setting_means_no_transport(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVENTBUS_TRANSPORT_URL", raising=False)
    bus = EventBus()
    assert bus.transport is None
    bus.close()


def test_a_transport_and_a_url_together_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        EventBus(transport=MemoryTransport(), transport_url="memory://")


# -- resolving URLs ------------------------------------------------------------------------


def test_an_unknown_scheme_says_what_it_may_have_meant() -> None:
    with pytest.raises(UnknownTransportError, match=r"did you mean 'redis://'\?") as caught:
        transport_from_url("rediz://127.0.0.1:6379")
    assert isinstance(caught.value, LookupError)
    assert "amqp" in str(caught.value)  # lists what is known


@pytest.mark.parametrize("url", ["", "127.0.0.1:6379", None, "://host"])
def test_something_that_is_not_a_url_is_refused(url: object) -> None:
    with pytest.raises(ConfigurationError):
        transport_from_url(url)  # type: ignore[arg-type]


def test_a_password_never_reaches_a_url_error() -> None:
    with pytest.raises(UnknownTransportError) as caught:
        transport_from_url("rediz://user:canary-pw@127.0.0.1:6379")
    assert "canary-pw" not in str(caught.value)
    with pytest.raises(ConfigurationError) as bad:
        transport_from_url("user:canary-pw@127.0.0.1:6379")
    assert "canary-pw" not in str(bad.value)


def test_a_missing_extra_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis raises ImportError
    monkeypatch.delitem(sys.modules, "eventbus_contrib.redis", raising=False)
    with pytest.raises(MissingDependencyError, match=r'pip install "eventbus\[redis\]"') as caught:
        transport_class("redis")
    assert isinstance(caught.value, ImportError)


def test_a_plugin_scheme_is_found_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    entry = importlib.metadata.EntryPoint(
        name="carrier", value="eventbus.transports._memory:MemoryTransport", group="x"
    )
    monkeypatch.setattr(_resolve, "_plugins", lambda: {"carrier": entry})
    assert transport_class("carrier") is MemoryTransport
    with pytest.raises(UnknownTransportError, match="did you mean 'carrier://'"):
        transport_class("carier")


def test_entry_points_are_read_only_for_a_scheme_the_table_does_not_know(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse() -> dict[str, object]:
        raise AssertionError("entry points read for a built-in scheme")

    monkeypatch.setattr(_resolve, "_plugins", refuse)
    assert transport_class("memory") is MemoryTransport


def test_importing_eventbus_imports_no_broker_library() -> None:
    import subprocess

    code = (
        "import sys, eventbus, eventbus.transports\n"
        "bad = [m for m in ('redis', 'aio_pika', 'nats', 'sqlalchemy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_handler_names_starting_with_at_are_reserved() -> None:
    bus = EventBus()
    with pytest.raises(ConfigurationError, match="'@'"):

        @bus.subscribe(object, name="@transport")
        def sneaky(event: object) -> None: ...

    bus.close()


# -- options in the URL ----------------------------------------------------------------------


def test_query_options_are_typed_like_their_defaults_and_others_stay_in_the_url() -> None:
    from eventbus.transports._options import url_options

    defaults = {
        "prefix": "eventbus:",
        "claim_idle": 60.0,
        "batch": 100,
        "quorum": False,
        "maxlen": None,
    }
    url, options = url_options(
        "redis://u:pw@127.0.0.1:6379/0?prefix=shop:&claim_idle=5&batch=7&quorum=true"
        "&maxlen=1000&ssl_cert_reqs=none",
        defaults,
        {"batch": 9},
    )
    assert url == "redis://u:pw@127.0.0.1:6379/0?ssl_cert_reqs=none"
    assert options == {
        "prefix": "shop:",
        "claim_idle": 5.0,
        "batch": 9,  # a keyword argument wins over the query
        "quorum": True,
        "maxlen": 1000,
    }


@pytest.mark.parametrize("query", ["batch=many", "quorum=maybe", "claim_idle=soon"])
def test_a_badly_typed_query_option_is_refused_without_the_password(query: str) -> None:
    from eventbus.transports._options import url_options

    defaults = {"claim_idle": 60.0, "batch": 100, "quorum": False}
    with pytest.raises(ConfigurationError, match=r"must be (a|true)") as caught:
        url_options(f"redis://u:canary-pw@127.0.0.1/0?{query}", defaults, {})
    assert "canary-pw" not in str(caught.value)


def test_an_unknown_keyword_option_is_refused_naming_the_known_ones() -> None:
    from eventbus.transports._options import url_options

    with pytest.raises(
        ConfigurationError,
        match=r"no option 'prefx' \(did you mean 'prefix'\?\); its options are prefix",
    ):
        url_options("redis://127.0.0.1/0", {"prefix": "x"}, {"prefx": "y"})


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("0", False), ("Yes", True)])
def test_whether_a_process_consumes_is_a_setting(tmp_path: Path, text: str, expected: bool) -> None:
    settings = load_settings(environ={"EVENTBUS_WORKER": text}, directory=tmp_path)
    assert settings.worker is expected
    with pytest.raises(ConfigurationError, match=r"EVENTBUS_WORKER must be true or false"):
        load_settings(environ={"EVENTBUS_WORKER": "sometimes"}, directory=tmp_path)


# -- unknown options in a transport URL ------------------------------------------------------
# (those of the brokers' transports, which need their extras: tests/transports/test_url_options.py)


def test_an_unknown_url_option_of_the_memory_transport_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="has the unknown option") as caught:
        transport_from_url("memory://shop?prefix=shop")
    assert "'prefix'; MemoryTransport's options are none" in str(caught.value)
