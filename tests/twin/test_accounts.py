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


@pytest.fixture()
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
            total, entries = list_entries(s)
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
