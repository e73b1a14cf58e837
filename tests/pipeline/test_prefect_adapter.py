"""flows/prefect_adapter.py copies private start-up details of one Prefect version: these tests
fail when the installed Prefect is another version, or no longer has those details."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from flows import prefect_adapter as adapter

REPO = Path(__file__).resolve().parents[2]


def test_adapter_version_is_the_pinned_and_installed_one() -> None:
    pinned = re.search(r"^prefect==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned is not None
    assert adapter.PREFECT_VERSION == pinned.group(1) == adapter.installed_version()
    adapter.check_version()  # no error on the pinned version


def test_another_version_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "PREFECT_VERSION", "2.0.0")
    with pytest.raises(adapter.PrefectVersionError) as err:
        adapter.check_version()
    message = str(err.value)
    assert "\n" not in message
    assert "prefect 2.0.0" in message and f"prefect {adapter.installed_version()}" in message
    assert "TRAINFLOW_FAST_API=0" in message


def test_prefects_own_start_is_still_the_one_we_copy() -> None:
    """Our command and private variables are those of Prefect's SubprocessASGIServer."""
    from prefect.server.api import server

    source = inspect.getsource(server.SubprocessASGIServer._run_uvicorn_command)
    ours = adapter.server_command(7)
    flags = ours[ours.index("uvicorn"):]
    flags[flags.index("--fd"):flags.index("--fd") + 2] = []  # our socket for its host/port
    for flag in flags:
        if not flag.startswith("/"):
            assert f'"{flag}"' in source, f"Prefect's start no longer passes {flag}"
    assert '"--host"' in source and '"127.0.0.1"' in source  # what our socket is bound to
    assert "prefect.__module_path__.parent" in source  # our --app-dir: the same folder
    import prefect

    assert ours[ours.index("--app-dir") + 1] == str(prefect.__module_path__.parent)
    for var in adapter.PRIVATE_VARS:
        assert f'"{var}": "1"' in source
    # create_app reads them (the private settings that turn the UI and services off)
    app_source = inspect.getsource(server.create_app)
    for var in adapter.PRIVATE_VARS:
        assert f'os.getenv("{var}")' in app_source
    module, _, name = adapter.APP_FACTORY.partition(":")
    assert module == server.__name__ and name == server.create_app.__name__
    params = inspect.signature(server.create_app).parameters
    assert all(p.default is not inspect.Parameter.empty for p in params.values())  # --factory


# each public setting the adapter sets -> where Prefect's settings model holds it, and the value
SETTINGS = {
    "PREFECT_UI_ENABLED": (("server", "ui", "enabled"), False),
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL":
        (("server", "services", "task_run_recorder", "flush_interval"), 1),
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL":
        (("server", "services", "event_persister", "flush_interval"), 1),
    "PREFECT_API_DATABASE_MIGRATE_ON_START": (("server", "database", "migrate_on_start"), False),
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": (("server", "register_blocks_on_start"), False),
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION":
        (("server", "memoize_block_auto_registration"), False),
}


def test_public_settings_we_set_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect ignores an unknown PREFECT_* name: each one we set must reach its setting."""
    from prefect.settings import Settings, get_current_settings

    env = adapter.server_env({}, skip_migrations=True)
    public = {k: v for k, v in env.items() if k not in adapter.PRIVATE_VARS}
    assert set(public) == set(SETTINGS)
    for name, value in public.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    for name, (path, expected) in SETTINGS.items():
        got = settings
        for part in path:
            got = getattr(got, part)
        assert got == expected, name
    with adapter.pointed_at("http://127.0.0.1:1/api"):
        current = get_current_settings()
        assert str(current.api.url) == "http://127.0.0.1:1/api"
        assert current.flows.heartbeat_frequency is None


def test_db_revision_reads_alembics_table(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "prefect.db"
    assert adapter.db_revision(db) is None
    with sqlite3.connect(db) as con:
        con.execute("create table alembic_version (version_num varchar(32) not null)")
        con.execute("insert into alembic_version values ('abc123')")
    con.close()
    assert adapter.db_revision(db) == "abc123"


def test_heartbeats_only_when_configured() -> None:
    """Prefect's default heartbeat is off for a run (its thread costs ≈ 0.5 s at every flow
    run's end); a frequency the user set (env, profile, prefect.toml) is honoured."""
    from prefect.settings import get_current_settings, temporary_settings

    assert get_current_settings().flows.heartbeat_frequency == 180  # Prefect's default
    with adapter.heartbeats_if_configured():
        assert get_current_settings().flows.heartbeat_frequency is None
    with temporary_settings(updates={"flows.heartbeat_frequency": 60}):  # as a user sets it
        with adapter.heartbeats_if_configured():
            assert get_current_settings().flows.heartbeat_frequency == 60
