"""``sitetwin demo --serve``: one account per role, usable at once, never made twice."""

from __future__ import annotations

import pytest

from sitetwin.commands.demo import DEMO_ROLES, demo_accounts
from twin.accounts import authenticate_password
from twin.store import open_store


@pytest.mark.integration
def test_demo_accounts(settings):
    accounts = demo_accounts(settings)
    assert set(accounts) == set(DEMO_ROLES)
    store = open_store(settings.twin_url)
    try:
        with store.session() as s:
            for role, (username, password) in accounts.items():
                user = authenticate_password(s, username, password)
                assert user is not None and user.role == role
    finally:
        store.close()
    assert demo_accounts(settings) == {}
