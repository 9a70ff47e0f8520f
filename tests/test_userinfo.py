"""A callback URL's user info, a credential: shown as ***, and with RELAY_SECRETS_KEY stored
sealed apart from the URL and put back only to send (relay/domain/userinfo.py)."""

from __future__ import annotations

import random

import pytest
from yarl import URL

from relay.domain import userinfo
from relay.domain.crypto import SecretBox
from relay.domain.watch import Watch

URLS = [
    "http://127.0.0.1/x",
    "http://tok3n@127.0.0.1/x",
    "http://@127.0.0.1/x",
    "http://u:p@[::1]:8/x@y",
    "https://u:p:q@h",
    "http://:p@h/",
    "https://hook-user:pw%40S3CRET@h.example:8443/hook?a=b@c#x@y",
    "https://user%3Aname:p@h/",
    "https://sk_live_abc:@h/",  # a token as the user, an empty password
    "https://ghp_TOKEN:x-oauth-basic@h/",  # a token as the user, a filler password
    "http://h@h/",
]


@pytest.mark.parametrize("url", URLS)
def test_a_hidden_credential_is_shown_as_the_api_shows_it_and_put_back_whole(url: str) -> None:
    stored, plain = userinfo.hide(url)
    assert userinfo.restore(stored, plain) == url
    if plain:  # all of the user info sealed apart: a user name may be the token
        assert URL(stored).raw_user == "***" and URL(stored).password is None
        assert URL(stored).host == URL(url).host and URL(stored).path == URL(url).path
        assert userinfo.shown(stored) == stored


def test_hide_and_restore_round_trip_on_random_urls() -> None:
    rng = random.Random(11)
    alphabet = "abz09:%@-._~!$&'()*+,;="
    for _ in range(2000):
        user = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        tail = rng.choice(["/", "/p@q", "?a=@", "#@", "/x?y#z", ""])
        url = f"https://{user + '@' if rng.random() < 0.8 else ''}h.example:8080{tail}"
        stored, plain = userinfo.hide(url)
        assert userinfo.restore(stored, plain) == url, url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h/", "https://u:***@h/"),
        ("https://sk_live_abc:@h/", "https://***@h/"),  # an empty password: the user is a token
        ("https://:p@h/", "https://:***@h/"),
        ("https://tok@h/", "https://***@h/"),
    ],
)
def test_shown(url: str, shown: str) -> None:
    assert userinfo.shown(url) == shown


def test_a_watch_sends_to_its_url_with_the_credential_put_back() -> None:
    box = SecretBox("Q2xpcFJlbGF5VGVzdEtleTAxMjM0NTY3ODkwMTIzNDU=")
    stored, plain = userinfo.hide("https://u:pw-S3CRET@h.example/hook")
    w = Watch(id="w", tenant="t", video_id="v", callback_url=stored, callback_auth=box.seal(plain))
    assert "pw-S3CRET" not in w.callback_url + w.callback_auth
    assert w.callback_for_sending(box.open) == "https://u:pw-S3CRET@h.example/hook"
    plain_watch = Watch(id="w", tenant="t", video_id="v", callback_url="https://u:p@h/")
    assert plain_watch.callback_for_sending(box.open) == "https://u:p@h/"  # stored before
    with pytest.raises(ValueError, match="RELAY_SECRETS_KEY"):
        w.callback_for_sending(SecretBox().open)  # the key gone: a clear error, no guess
