"""URLs are printed with their credentials hidden, also URLs that do not parse."""

from __future__ import annotations

import time

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
        # an IP literal host: its colons are no password's, and the @ after it is in the path
        ("http://[::1]:8080/users/@me", "http://[::1]:8080/users/@me"),
        ("https://[2001:db8::5]/npm/@scope/pkg", "https://[2001:db8::5]/npm/@scope/pkg"),
        ("http://[fe80::1%25eth0]/x@host:80", "http://[fe80::1%25eth0]/x@host:80"),
        ("http://ops:pw@[::1]:8080/users/@me", "http://ops:***@[::1]:8080/users/@me"),
        ("http://ops:S3/CR@[::1]:8080/v1", "http://ops:***@[::1]:8080/v1"),
        # a key in the query: its value is hidden, its name and the other parameters are kept
        ("https://host/mcp?api_key=S3CR", "https://host/mcp?api_key=***"),
        ("https://host/mcp?region=eu&token=S3CR&v=2", "https://host/mcp?region=eu&token=***&v=2"),
        ("https://u:pw@host/x?Access_Token=S3CR#top", "https://u:***@host/x?Access_Token=***#top"),
        ("http://a:b?c#d@host/x?sig=S3CR", "http://a:***@host/x?sig=***"),  # the ? in the password
        ("host:30000/v1?KEY=S3CR", "host:30000/v1?KEY=***"),
        ("https://h/x?apikey=1&api-key=2&x-api-key=3", "https://h/x?apikey=***&api-key=***&x-api-key=***"),
        ("https://h/x?auth=1&authorization=2&secret=3", "https://h/x?auth=***&authorization=***&secret=***"),
        ("https://h/x?password=1&passwd=2&pwd=3", "https://h/x?password=***&passwd=***&pwd=***"),
        (
            "https://h/x?signature=1&client_secret=2&code=3",
            "https://h/x?signature=***&client_secret=***&code=***",
        ),
        (
            "https://h/x?hf_token=1&brave_key=2;app_secret=3",
            "https://h/x?hf_token=***&brave_key=***;app_secret=***",
        ),
        ("https://h/x?X-Amz-Date=1&X-Amz-Signature=2", "https://h/x?X-Amz-Date=1&X-Amz-Signature=***"),
        ("https://h/x?apiKey=1&api%5Fkey=2", "https://h/x?apiKey=***&api%5Fkey=***"),
        # a URL nested in another: redacted as a URL of its own; percent-encoded, hidden whole
        ("https://h/?next=https://h2/?token=S3CR", "https://h/?next=https://h2/?token=***"),
        ("https://h/?next=https://u:S3CR@h2/x&v=2", "https://h/?next=https://u:***@h2/x&v=2"),
        ("https://h/web/2020/https://u:S3CR@h2/x", "https://h/web/2020/https://u:***@h2/x"),
        ("https://h/?next=https%3A%2F%2Fh2%2F%3Ftoken%3DS3CR&v=2", "https://h/?next=***&v=2"),
        ("https://h/?next=https%3A%2F%2Fu%3AS3CR%40h2%2F", "https://h/?next=***"),
        (
            "https://h/?r=https%3A%2F%2Fh2%2F%3Fr%3Dhttps%253A%252F%252Fh3%252F%253Fsig%253DS3CR",
            "https://h/?r=***",
        ),
        (
            "https://h/?next=https%3A%2F%2Fh2%2Fcb%3Fstate%3D1",
            "https://h/?next=https%3A%2F%2Fh2%2Fcb%3Fstate%3D1",
        ),
        ("https://h/?next=https://h2/users/@me", "https://h/?next=https://h2/users/@me"),
        # no secret to hide: names that only contain a secret's name, empty values, the fragment
        ("https://h/s?q=api_key&monkey=1&keys=2&token", "https://h/s?q=api_key&monkey=1&keys=2&token"),
        ("https://h/x?api_key=&page=2", "https://h/x?api_key=&page=2"),
        ("https://h/x#token=abc", "https://h/x#token=abc"),
    ],
)
def test_credentials_are_hidden_and_the_rest_kept(url, shown):
    assert redact_url(url) == shown


def test_an_ssh_login_can_be_kept_and_a_password_is_hidden_all_the_same():
    assert redact_url("ssh://qwq@host:22", keep_user=True) == "ssh://qwq@host:22"
    assert redact_url("ssh://qwq:S3CR@host:22", keep_user=True) == "ssh://qwq:***@host:22"
    assert has_password("ssh://qwq:S3CR@host") and has_password("http://a:S3CR/ET@127.0.0.1:30000")
    assert not has_password("ssh://qwq@host") and not has_password("http://host/users/a:b@me")
    assert not has_password("http://[::1]:8080/users/@me") and not has_password("http://[::1]/a:b@h:1")
    assert (
        redact_urls_in("GET http://[::1]:8080/users/@me failed") == "GET http://[::1]:8080/users/@me failed"
    )


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


def test_query_keys_in_free_text_are_hidden_and_the_text_around_them_kept():
    import httpx

    url = "https://mcp.example.com/mcp?region=eu&api_key=S3CRETKEY"
    response = httpx.Response(401, request=httpx.Request("POST", url))
    with pytest.raises(httpx.HTTPStatusError) as err:
        response.raise_for_status()
    assert "S3CRETKEY" in str(err.value)  # httpx quotes the URL, query and all
    shown = redact_urls_in(str(err.value))
    assert "S3CRETKEY" not in shown and "'https://mcp.example.com/mcp?region=eu&api_key=***'" in shown
    # punctuation closing a sentence is no part of the key: it stays, so does the text around
    assert (
        redact_urls_in("see https://h/x?token=T0K, (https://h/y?key=K3Y). Done? ?key=plain text")
        == "see https://h/x?token=***, (https://h/y?key=***). Done? ?key=plain text"
    )
    assert redact_urls_in("ends with https://h/?q=1?") == "ends with https://h/?q=1?"
    assert (
        redact_urls_in("302 to 'https://h/login?next=https://h2/?token=T0K'.")
        == "302 to 'https://h/login?next=https://h2/?token=***'."
    )


@pytest.mark.parametrize(
    "url",
    [
        "admin:S3CRETPW@127.0.0.1:30000",  # no scheme: urlsplit reads "admin" as the scheme
        "http://admin:S3CR/ETPW@127.0.0.1:30000",  # urlsplit's port error quoted 'S3CR'
        "http://admin:S3CR?ETPW@127.0.0.1:30000",
        "http://admin:1234/S3CR@127.0.0.1",  # parses, with the password in the path
        "http://admin:S3CR@[::1",  # does not parse at all
        "ftp://admin:S3CR@127.0.0.1:30000",
        "ftp://127.0.0.1:30000/v1?api_key=S3CR",  # a key in the query
        "127.0.0.1:30000/v1?token=S3CR",
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


@pytest.mark.parametrize(
    "text",
    [
        "QUJD" * 50_000,  # a base64 blob: the scheme pattern was retried at each of its letters
        "see https://h/" + "." * 100_000 + "x",  # a run of dots in a URL: the trailing punctuation
        "a://" * 75_000,  # one URL of schemes
        "a:// " * 60_000,  # many URLs without a body
        "https://h/?" + "api_key=K&" * 30_000,
        "https://h/?" + "a=x://?&" * 30_000,  # URLs nested in one
        "https://h/?a=" + "https%3A%2F%2Fh%2F%3Fa%3D" * 10_000 + "1",  # ... percent-encoded
    ],
)
def test_redaction_takes_time_linear_in_the_text(text):
    # The old code took 30 s or more on each of the first two (O(n^2)); a linear scan, milliseconds.
    # CPU time of this process, not wall time: a loaded machine (CI's other workers) stretched the wall
    # clock past the bound while the scan itself stayed in milliseconds.
    began = time.process_time()
    shown = redact_urls_in(text)
    assert time.process_time() - began < 2.0
    assert "api_key=K&" not in shown


def test_text_cut_to_a_length_never_shows_part_of_a_password():
    secrets = ("S3CRETPW", "T0KENVAL")
    url = "http://ops:S3CRETPW@127.0.0.1:1/x?token=T0KENVAL"
    # The head's cut sweeps over the URL in the first text, the tail's in the second.
    for text in (f"{url} {'b ' * 60}", f"{'a ' * 60}{url}"):
        for max_chars in range(2, len(text)):
            shown = redact_urls_in(text, max_chars=max_chars)
            pieces = {s[i : i + 3] for s in secrets for i in range(len(s) - 2)}
            assert not any(p in shown for p in pieces), (max_chars, shown)
            assert "chars omitted from the middle" in shown and len(shown) <= max_chars + 50
    assert redact_urls_in(f"{url} end", max_chars=100) == "http://ops:***@127.0.0.1:1/x?token=*** end"
