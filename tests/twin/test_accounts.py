"""Accounts and tokens: ``sitetwin users ...`` through ``cli.main`` on SQLite and PostgreSQL,
argon2id hashes, tokens stored hashed and shown once, every change in the audit log."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from sqlalchemy import select

from sitetwin.cli import main
from twin.accounts import authenticate_password, authenticate_token
from twin.audit import list_entries
from twin.models import ApiToken, User
from twin.store import open_store

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(twin_url, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SITETWIN_TWIN__URL", twin_url)
    monkeypatch.setenv("SITETWIN_SERVICES__STATE_DIR", str(tmp_path / "state"))

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_users_lifecycle(cli, twin_url):
    code, out, err = cli("users", "add", "li.wei", "--role", "regulator", "--name", "Li Wei",
                         "--lang", "zh-CN", "--password-stdin", stdin="a long passphrase\n")
    assert code == 0, err
    assert cli("users", "add", "li.wei", "--role", "noc", "--password-stdin",
               stdin="another passphrase\n")[2].startswith("sitetwin: error: user 'li.wei' already exists")
    assert "at least 10" in cli("users", "add", "x", "--role", "noc", "--password-stdin",
                                stdin="short\n")[2]
    code, out, _ = cli("users", "list", "--json")
    assert [(u["username"], u["role"], u["lang"]) for u in json.loads(out)] == [("li.wei", "regulator", "zh-CN")]
    assert "password" not in out

    store = open_store(twin_url)
    try:
        with store.session() as s:
            user = s.scalar(select(User).where(User.username == "li.wei"))
            assert user.password_hash.startswith("$argon2id$")
            assert authenticate_password(s, "li.wei", "a long passphrase") is not None
            assert authenticate_password(s, "li.wei", "wrong") is None
            assert authenticate_password(s, "nobody", "a long passphrase") is None

        assert cli("users", "set-role", "li.wei", "grid")[0] == 0
        assert cli("users", "reset-password", "li.wei", "--password-stdin",
                   stdin="a newer passphrase\n")[0] == 0
        code, out, _ = cli("users", "token", "create", "li.wei", "--name", "ledger sync", "--json")
        token = json.loads(out)["token"]
        with store.session() as s:
            row = s.scalar(select(ApiToken))
            assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
            assert token not in (row.prefix, row.token_sha256, row.name)
            assert authenticate_token(s, token).role == "grid"
        code, out, _ = cli("users", "token", "list")
        assert token not in out and "ledger sync" in out
        assert cli("users", "token", "revoke", str(row.id))[0] == 0
        assert cli("users", "disable", "li.wei")[0] == 0
        with store.session() as s:
            assert authenticate_token(s, token) is None
            assert authenticate_password(s, "li.wei", "a newer passphrase") is None
            _total, entries = list_entries(s)
        actions = [e["action"] for e in reversed(entries)]
        assert actions == ["user.add", "user.set_role", "user.reset_password", "token.create",
                           "token.revoke", "user.disable"]
        assert all(e["actor"].startswith("cli:") for e in entries)
        role_change = next(e for e in entries if e["action"] == "user.set_role")
        assert role_change["before"]["role"] == "regulator" and role_change["after"]["role"] == "grid"
        text = json.dumps(entries, default=str)
        assert "argon2" not in text and token not in text and "passphrase" not in text
    finally:
        store.close()
    assert cli("users", "set-role", "nobody", "grid")[2].startswith("sitetwin: error: unknown user")


def test_cli_changes_to_flags_and_sites_are_audited(cli, twin_url, tmp_path):
    from datetime import UTC, datetime

    from rules.finding import Finding
    from rules.flag import FlagBook
    from tests.twin.conftest import add_site

    store = open_store(twin_url)
    try:
        add_site(store, "S1", "planned")
        now = datetime.now(UTC)
        flag = FlagBook(store).sync("site_offline", [Finding(
            kind="site_offline", rule="site_offline", site_id="S1", severity="warning",
            window_start=now, window_end=now, summary="silent")], now, 60).opened[0]
        assert cli("flags", "ack", str(flag["id"]), "--by", "wang.wu")[0] == 0
        code, out, err = cli("flags", "assign", str(flag["id"]), "--to", "li.si", "--by", "wang.wu")
        assert code == 0 and "assigned to li.si" in out, err
        assert cli("sites", "transition", "S1", "site_secured", "--by", "wang.wu")[0] == 0
        with store.session() as s:
            _, entries = list_entries(s)
    finally:
        store.close()
    got = [(e["action"], e["after"].get("by")) for e in reversed(entries)]
    assert got == [("flag.ack", "wang.wu"), ("flag.assign", "wang.wu"), ("site.transition", "wang.wu")]
    assert all(e["actor"].startswith("cli:") for e in entries)


def test_a_0001_registry_gets_accounts_audit_and_flag_columns(twin_url):
    """Revision 0005 on a registry made at the baseline: new tables, columns and triggers."""
    from sqlalchemy import create_engine, inspect, text

    from twin.models import Base

    engine = create_engine(twin_url)
    mine = {"users", "api_tokens", "web_sessions", "audit_log"}
    with engine.begin() as conn:
        Base.metadata.create_all(conn, tables=[t for n, t in Base.metadata.tables.items()
                                               if n not in mine])
        for column in ("acknowledged_by", "acknowledged_at", "assignee"):
            conn.execute(text(f"ALTER TABLE flags DROP COLUMN {column}"))
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('0001')"))
    engine.dispose()
    store = open_store(twin_url)
    try:
        assert store.version >= "0005"
        names = set(inspect(store.engine).get_table_names())
        assert mine <= names
        flag_columns = {c["name"] for c in inspect(store.engine).get_columns("flags")}
        assert {"acknowledged_by", "acknowledged_at", "assignee"} <= flag_columns
        with store.session() as s:
            from twin.accounts import add_user

            add_user(s, "a", "admin", "long enough password", actor="test")
        with pytest.raises(Exception, match="append-only"):
            with store.engine.begin() as conn:
                conn.execute(text("DELETE FROM audit_log"))
    finally:
        store.close()
