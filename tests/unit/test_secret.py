"""Secret masking: the wrapper, the forms a password takes in foreign texts, and scrubbing."""

from __future__ import annotations

import base64
import logging
from urllib.parse import quote

import pytest
from winasync_eda.secret import MASK, Secret, mask, scrub, secret_forms

PASSWORD = "Pa$$w0rd-Zebra/42!"


def test_every_text_form_of_a_secret_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(PASSWORD)
    logging.getLogger("test").warning("%s %r %s", secret, secret, f"{secret}")
    for text in (repr(secret), str(secret), f"{secret:>40}", caplog.text, repr([secret])):
        assert PASSWORD not in text
    assert secret.reveal() == PASSWORD
    assert secret == Secret(PASSWORD) and secret != Secret("other")
    assert not Secret("")


def test_mask_replaces_the_longest_secret_first_and_skips_short_ones() -> None:
    assert mask("abcdef and abc", ["abc", "abcdef"]) == f"{MASK} and {MASK}"
    assert mask("a bad day", ["a"], min_length=4) == "a bad day"


def test_secret_forms_cover_quoting_basic_auth_and_a_proxy_password() -> None:
    forms = secret_forms(Secret(PASSWORD), "ansible", "http://user:hunter2@proxy:3128")
    assert PASSWORD in forms
    assert quote(PASSWORD, safe="") in forms and quote(PASSWORD) in forms
    assert base64.b64encode(f"ansible:{PASSWORD}".encode()).decode() in forms
    assert "hunter2" in forms
    assert list(forms) == sorted(forms, key=len, reverse=True)
    assert secret_forms(None) == ()


def test_scrub_masks_secrets_and_url_credentials_and_bounds_the_text() -> None:
    text = f"see https://bob:hunter2@proxy:8080/x and {PASSWORD}\n\n" + "y" * 1000
    scrubbed = scrub(text, [PASSWORD])
    assert PASSWORD not in scrubbed
    assert "hunter2" not in scrubbed
    assert "https://***@proxy:8080/x" in scrubbed
    assert "\n" not in scrubbed
    assert len(scrubbed) <= 303
