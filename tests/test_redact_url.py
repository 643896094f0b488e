"""URLs are printed with their credentials hidden, also URLs that do not parse."""

from __future__ import annotations

import pytest

from qwq_agent.agent.clients import OpenAIChatClient, SGLangClient
from qwq_agent.urls import has_password, redact_url, redact_urls_in


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
        # no scheme: the userinfo is there all the same
        ("admin:S3CRETPW@127.0.0.1:30000", "admin:***@127.0.0.1:30000"),
        ("ghp_token@host", "***@host"),
        # an unencoded / ? # in the password: the @ before the host still ends the userinfo
        ("http://admin:S3CR/ETPW@127.0.0.1:30000", "http://admin:***@127.0.0.1:30000"),
        ("http://a:b?c#d@host", "http://a:***@host"),
        ("http://admin:1234/56@host:30000/v1", "http://admin:***@host:30000/v1"),
        ("http://host:80/users/@me", "http://host:80/users/@me"),
    ],
)
def test_credentials_are_hidden_and_the_rest_kept(url, shown):
    assert redact_url(url) == shown


def test_an_ssh_login_can_be_kept_and_a_password_is_hidden_all_the_same():
    assert redact_url("ssh://qwq@host:22", keep_user=True) == "ssh://qwq@host:22"
    assert redact_url("ssh://qwq:S3CR@host:22", keep_user=True) == "ssh://qwq:***@host:22"
    assert has_password("ssh://qwq:S3CR@host") and has_password("http://a:S3CR/ET@127.0.0.1:30000")
    assert not has_password("ssh://qwq@host") and not has_password("http://host/users/a:b@me")


def test_every_url_in_a_library_s_error_text_is_redacted():
    import httpx

    url = "http://ops:S3CRETPW@127.0.0.1:30000/workers"
    response = httpx.Response(403, request=httpx.Request("GET", url))
    with pytest.raises(httpx.HTTPStatusError) as err:
        response.raise_for_status()
    assert "S3CRETPW" in str(err.value)  # httpx quotes the URL whole
    shown = redact_urls_in(str(err.value))
    assert "S3CRETPW" not in shown and "'http://ops:***@127.0.0.1:30000/workers'" in shown
    assert "https://developer.mozilla.org/en-US/docs/Web/HTTP/Status/403" in shown  # others unchanged
    assert (
        redact_urls_in("to https://tok@h/x and ftp://u:p@h, then")
        == "to https://***@h/x and ftp://u:***@h, then"
    )
    assert redact_urls_in("no URL here: a:b@c") == "no URL here: a:b@c"


@pytest.mark.parametrize(
    "url",
    [
        "admin:S3CRETPW@127.0.0.1:30000",  # no scheme: urlsplit reads "admin" as the scheme
        "http://admin:S3CR/ETPW@127.0.0.1:30000",  # urlsplit's port error quoted 'S3CR'
        "http://admin:S3CR?ETPW@127.0.0.1:30000",
        "http://admin:1234/S3CR@127.0.0.1",  # parses, with the password in the path
        "http://admin:S3CR@[::1",  # does not parse at all
        "ftp://admin:S3CR@127.0.0.1:30000",
    ],
)
def test_no_part_of_a_password_is_in_the_model_url_check_s_lines(url):
    from qwq_agent.cli.endpoint import check_model_url
    from qwq_agent.cli.errors import CliError

    with pytest.raises(CliError) as err:
        check_model_url(url)
    lines = err.value.render("run")
    assert "S3CR" not in lines and "1234" not in lines, lines
    assert "127.0.0.1" in lines or "[::1" in lines or "valid URL" in lines


def test_the_cli_prints_a_bad_model_url_without_its_password():
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwq_agent.cli.main",
            "run",
            "hi",
            "--model-url",
            "admin:S3CRETPW@127.0.0.1:30000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "S3CR" not in proc.stdout + proc.stderr
    assert "--model-url http://***@127.0.0.1:30000" in proc.stderr


async def test_clients_never_show_the_password_in_their_repr():
    async with SGLangClient("http://ops:Sup3rSecretPw@127.0.0.1:1") as native:
        assert "Sup3rSecretPw" not in repr(native)
    async with OpenAIChatClient("http://ops:Sup3rSecretPw@127.0.0.1:1/v1", model="m") as chat:
        assert "Sup3rSecretPw" not in repr(chat)
