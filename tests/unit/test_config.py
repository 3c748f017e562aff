from __future__ import annotations

import pytest

from tasks.config import LOCAL_REDIS, load


def test_defaults_fall_back_to_local_redis(tmp_path):
    cfg = load({"VIRT_REVERT_CONFIG": str(tmp_path / "absent.toml")})
    assert cfg.broker_url == cfg.result_backend == cfg.redis_url == LOCAL_REDIS
    assert cfg.storage_roots == ("/var/lib/libvirt/images",)


def test_file_then_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('broker_url = "redis://b:1/0"\nstorage_roots = ["/a", "/b"]\nlock_ttl = 60\n')
    cfg = load({"VIRT_REVERT_CONFIG": str(path), "VIRT_REVERT_STORAGE_ROOTS": "/x:/y",
                "VIRT_REVERT_RESULT_BACKEND": "redis://r:2/1"})
    assert cfg.broker_url == "redis://b:1/0"
    assert cfg.result_backend == cfg.redis_url == "redis://r:2/1"
    assert cfg.storage_roots == ("/x", "/y")
    assert cfg.lock_ttl == 60


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('brokr_url = "x"\n')
    with pytest.raises(ValueError, match="brokr_url"):
        load({"VIRT_REVERT_CONFIG": str(path)})


def test_to_env_round_trips(tmp_path):
    from tasks.config import Config, to_env

    cfg = Config(broker_url="redis://b:1/0", storage_roots=("/a", "/b"), heartbeat_ttl=5)
    assert load({**to_env(cfg), "VIRT_REVERT_CONFIG": str(tmp_path / "absent.toml")}) == cfg
