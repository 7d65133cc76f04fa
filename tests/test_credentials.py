"""Secret settings: redacted wherever the config is written, resolved only at use (from the
value, the environment or a mounted file)."""

from __future__ import annotations

import json

import pytest
import yaml

from recsys_dist import cli
from recsys_dist.config import config_from_dict, config_json, load_config
from recsys_dist.credentials import SecretError, resolve_secret

SECRET = "s3cr3t-PLANTED"
SECRET_URLS = {  # a URL with a password -> what a person may still read of it
    "password-only": (
        f"redis://:{SECRET}@redis.example:6380/2",
        "redis://:***@redis.example:6380/2",
    ),
    "user-and-password": (
        f"redis://app:{SECRET}@redis.example:6380/0",
        "redis://app:***@redis.example:6380/0",
    ),
    "tls": (f"rediss://app:{SECRET}@redis.example:6380/1", "rediss://app:***@redis.example:6380/1"),
    "query": (
        f"redis://redis.example:6380/0?password={SECRET}",
        "redis://redis.example:6380/0?password=***",
    ),
}


@pytest.mark.parametrize(("url", "shown"), SECRET_URLS.values(), ids=SECRET_URLS.keys())
def test_a_password_is_written_nowhere(url, shown, tmp_path, capsys):
    config = load_config(None, [f"serve.redis_url={url}"])
    assert config.to_dict()["serve"]["redis_url"] == url  # in-process (the workers) as given
    assert config_from_dict(config.to_dict()) == config
    config.save(tmp_path / "config.yaml")
    saved = (tmp_path / "config.yaml").read_text()
    line = config_json(config)
    assert cli.main(["config", "show", f"serve.redis_url={url}"]) == 0
    assert cli.main(["config", "show", "--json", f"serve.redis_url={url}"]) == 0
    shown_by_cli = capsys.readouterr().out
    for written in (saved, line, shown_by_cli):
        assert SECRET not in written and "redis.example" in written and "6380" in written
    assert yaml.safe_load(saved)["serve"]["redis_url"] == shown
    assert json.loads(line)["serve"]["redis_url"] == shown


def test_a_redacted_secret_loads_back_but_is_refused_at_use(tmp_path):
    config = load_config(None, [f"serve.redis_url=redis://:{SECRET}@redis.example:6379/0"])
    config.save(tmp_path / "config.yaml")
    saved = load_config(tmp_path / "config.yaml")  # other commands read a run's config back
    assert saved.serve.redis_url == "redis://:***@redis.example:6379/0"
    with pytest.raises(SecretError, match=r"redacted secret.*serve\.redis_url=env:REDIS_URL"):
        resolve_secret(saved.serve.redis_url, "serve.redis_url")


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://app@redis.example/0"])
def test_a_url_without_a_password_is_written_and_used_as_given(url, tmp_path):
    config = load_config(None, [f"serve.redis_url={url}"])
    config.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert json.loads(config_json(config))["serve"]["redis_url"] == url
    assert resolve_secret(url, "serve.redis_url") == url


def test_a_secret_comes_from_the_environment_at_use(monkeypatch, tmp_path):
    config = load_config(None, ["serve.redis_url=env:RECSYS_TEST_REDIS_URL"])  # unset: fine
    config.save(tmp_path / "config.yaml")
    assert "env:RECSYS_TEST_REDIS_URL" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(SecretError, match="serve.redis_url.*'RECSYS_TEST_REDIS_URL' is not set"):
        resolve_secret(config.serve.redis_url, "serve.redis_url")
    monkeypatch.setenv("RECSYS_TEST_REDIS_URL", f"redis://:{SECRET}@redis.example:6379/0")
    resolved = resolve_secret(config.serve.redis_url, "serve.redis_url")
    assert resolved == f"redis://:{SECRET}@redis.example:6379/0"


def test_a_secret_comes_from_a_mounted_file_at_use(tmp_path):
    path = tmp_path / "redis_url"
    path.write_text(f"redis://:{SECRET}@redis.example:6379/0\n")
    config = load_config(None, [f"serve.redis_url=file:{path}"])
    assert config_json(config).count(f"file:{path}") == 1 and SECRET not in config_json(config)
    resolved = resolve_secret(config.serve.redis_url, "serve.redis_url")
    assert resolved == f"redis://:{SECRET}@redis.example:6379/0"  # stripped
    missing = tmp_path / "missing"
    with pytest.raises(SecretError, match=f"serve.redis_url=file:{missing}: cannot read"):
        resolve_secret(f"file:{missing}", "serve.redis_url")
