"""The sample config is the single source of defaults, and bad keys are named."""

from __future__ import annotations

import pytest

from sitetwin.config import SAMPLE_CONFIG, ConfigError, Settings, load_settings, parse_duration, parse_size


def test_sample_config_loads_and_equals_the_defaults(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("SITETWIN_"):
            monkeypatch.delenv(key)
    assert load_settings(SAMPLE_CONFIG) == Settings()


def test_sample_config_mentions_every_key():
    from pydantic import BaseModel

    text = SAMPLE_CONFIG.read_text()

    def table(info) -> bool:
        return isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)

    def check(section: str, model: type[BaseModel]) -> None:
        if not all(table(info) for info in model.model_fields.values()):  # [adapters] has only tables
            assert f"[{section}]" in text, f"[{section}] is not in the sample config"
        for key, info in model.model_fields.items():
            if table(info):
                check(f"{section}.{key}", info.annotation)  # a nested table, e.g. [adapters.pm]
            elif str(info.annotation).startswith("dict[str, "):  # tables by name: [a.b.vendors.x]
                assert f"[{section}.{key}." in text, f"no [{section}.{key}.<name>] in the sample"
            else:
                assert f"{key} =" in text, f"{section}.{key} is not documented in the sample config"

    for section, field in Settings.model_fields.items():
        check(section, field.annotation)


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mqtt]\nservers = ["tcp://file:1883"]\n[collector]\nbatch_age = "250ms"\n')
    monkeypatch.setenv("SITETWIN_MQTT__SERVERS", '["tcp://env:1883"]')
    monkeypatch.setenv("SITETWIN_INFLUXDB__TOKEN", "s3cret")
    s = load_settings(cfg)
    assert s.mqtt.servers == ["tcp://env:1883"]
    assert s.collector.batch_age == 0.25
    assert s.influxdb.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.model_dump())


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[mqtt]\nqos = 2\n', "mqtt.qos"),
        ('[collector]\nbatch_age = "soon"\n', "collector.batch_age"),
        ('[mqtt]\nservrs = ["x"]\n', "mqtt.servrs"),
        ('[nonsense]\na = 1\n', "nonsense"),
    ],
)
def test_a_bad_key_is_named(tmp_path, text, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(cfg)


def test_unreadable_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_durations_and_sizes():
    assert parse_duration("250ms") == 0.25
    assert parse_duration("5m") == 300
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration(3) == 3.0
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size("1GB") == 10**9
    for bad in ("-1s", "fast", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("lots")
