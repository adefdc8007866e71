"""``r1proxy import-litellm`` on the original architecture's two LiteLLM configs (tests/data, verbatim from
the team-scale research, key redacted there): they convert, load, and no literal secret is ever copied."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from r1proxy.cli import main
from r1proxy.config import build_config, load_config
from r1proxy.litellm_import import ImportError_, convert, load_yaml

DATA = Path(__file__).parent / "data"
LITERAL = "sk-or-v1-REDACTED"


@pytest.mark.parametrize("name", ["litellm_step1.yaml", "litellm_redis_cache.yaml"])
def test_the_original_configs_convert(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "config.toml"
    rc = main(["import-litellm", str(DATA / name), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 3  # converted, and a literal key was found: a status that cannot be missed
    text = out.read_text()
    assert LITERAL not in text and LITERAL not in err
    assert "SECRET NOT COPIED: model_list[0].litellm_params.api_key" in err
    assert "OPENROUTER_API_KEY" in err
    cfg = load_config(str(out), env={"OPENROUTER_API_KEY": "sk-or-v1-from-env"})
    (model,) = cfg.models
    assert (model.name, model.upstream, model.model) == ("deepseek-r1-free", "openrouter", "deepseek/deepseek-r1:free")
    assert model.rpm == 20 and model.overrides == {"temperature": 0.6, "top_p": 0.95}
    assert cfg.upstreams["openrouter"].base_url == "https://openrouter.ai/api/v1"
    assert cfg.upstreams["openrouter"].api_key == "sk-or-v1-from-env"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 4000)
    assert cfg.cache.enabled
    assert cfg.cache.redis.url == "redis://localhost:6379/0"
    assert "server_settings.host '0.0.0.0' not carried" in err
    if name == "litellm_redis_cache.yaml":
        assert cfg.cache.redis.ttl == 3600 and cfg.cache.ttl == 3600
        (key,) = cfg.keys
        assert key.rpm == 100
        shown = err.split("new local key for Roo Code (shown once; set it as Roo's API key): ")[1].split()[0]
        import hashlib

        assert hashlib.sha256(shown.encode()).hexdigest() == key.key_sha256
        assert "dropped: server_settings.enable_cors" in err
    else:
        assert cfg.keys == ()


def test_env_references_and_secrets_elsewhere() -> None:
    doc = load_yaml("""
model_list:
  - model_name: r1
    litellm_params: {model: openrouter/deepseek/deepseek-r1, api_key: os.environ/MY_OR_KEY, rpm: 7}
  - model_name: local
    litellm_params: {model: openai/qwen, api_base: "http://api.example.com:11434/v1"}
litellm_settings:
  cache: true
  cache_params: {type: redis, url: "redis://:hunter2@cache.example:6380/1", password: os.environ/RPW}
general_settings: {master_key: sk-1234-master}
""")
    res = convert(doc)
    assert "hunter2" not in res.toml and "sk-1234-master" not in res.toml
    assert res.secrets == ["litellm_settings.cache_params.url (password)", "general_settings.master_key"]
    cfg = build_config(tomllib.loads(res.toml), env={"MY_OR_KEY": "k1", "RPW": "pw"})
    r1, local = cfg.models
    assert (r1.model, r1.rpm, cfg.upstreams["openrouter"].api_key) == ("deepseek/deepseek-r1", 7, "k1")
    assert (local.upstream, local.model) == ("example", "qwen")
    assert cfg.upstreams["example"].base_url == "http://api.example.com:11434/v1"
    assert cfg.cache.redis.url == "redis://cache.example:6380/1" and cfg.cache.redis.password == "pw"


def test_bad_input_is_one_line_and_never_quotes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_list:\n  - api_key: sk-or-v1-SECRET\n    : [oops\n")
    assert main(["import-litellm", str(bad), "-o", str(tmp_path / "c.toml")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err and "SECRET" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ImportError_, match="no model_list"):
        convert({"litellm_settings": {}})
    existing = tmp_path / "config.toml"
    existing.write_text("# mine\n")
    assert main(["import-litellm", str(DATA / "litellm_step1.yaml"), "-o", str(existing)]) == 2
    assert existing.read_text() == "# mine\n"
