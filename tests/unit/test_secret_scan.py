"""The secret scanner of the tests finds a secret in each form a leak could take."""

from __future__ import annotations

import base64

import pytest

from tests.secret_scan import assert_not_shown, pem_body

SECRET = "S3cret:Pa55/word"


@pytest.mark.parametrize(
    "shown",
    [
        f"password={SECRET}",
        "Authorization: Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode(),
        "pw=S3cret%3APa55%2Fword",
        SECRET.encode().hex(),
    ],
    ids=["raw", "inside-basic", "url-quoted", "hex"],
)
def test_each_form_is_found(shown: str) -> None:
    secrets = {"the password": SECRET}
    if "Basic" in shown:  # the Basic header encodes user:password; scan for that pair too
        secrets["the pair"] = f"u:{SECRET}"
    with pytest.raises(AssertionError, match="the p") as info:
        assert_not_shown([shown], secrets)
    assert SECRET not in str(info.value)


def test_a_key_is_found_by_its_bytes() -> None:
    key = bytes(range(40))
    pem = (
        b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(key) + b"-----END PRIVATE KEY-----\n"
    )
    assert pem_body(pem) == key
    with pytest.raises(AssertionError):
        assert_not_shown([pem.decode()], {"the key": key})
    assert_not_shown(["nothing here"], {"the key": key})
