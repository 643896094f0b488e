"""URLs are printed with their credentials hidden, also URLs that do not parse."""

from __future__ import annotations

import pytest

from qwq_agent.agent.clients import OpenAIChatClient, SGLangClient
from qwq_agent.urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://ops:Sup3rSecretPw@host:30000/v1", "http://ops:***@host:30000/v1"),
        ("https://ghp_token@host", "https://***@host"),  # a user name alone is often the secret
        ("http://ops:pw@[::1", "http://ops:***@[::1"),  # does not parse: redacted all the same
        ("http://u:p@a@b/x", "http://u:***@b/x"),  # the last @ ends the userinfo
        ("http://127.0.0.1:30000", "http://127.0.0.1:30000"),
        ("http://host/path@v2", "http://host/path@v2"),  # an @ in the path is no userinfo
        ("127.0.0.1:30000", "127.0.0.1:30000"),
    ],
)
def test_credentials_are_hidden_and_the_rest_kept(url, shown):
    assert redact_url(url) == shown


async def test_clients_never_show_the_password_in_their_repr():
    async with SGLangClient("http://ops:Sup3rSecretPw@127.0.0.1:1") as native:
        assert "Sup3rSecretPw" not in repr(native)
    async with OpenAIChatClient("http://ops:Sup3rSecretPw@127.0.0.1:1/v1", model="m") as chat:
        assert "Sup3rSecretPw" not in repr(chat)
