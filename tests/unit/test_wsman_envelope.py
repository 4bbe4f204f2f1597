"""The asyncio client's WS-Management envelopes: what it sends reads as the simulated host's
parser (and MS-WSMV) expects, and what hosts answer is read back, faults included."""

from __future__ import annotations

import base64
from xml.etree import ElementTree as ET

import pytest
from winasync_eda.transports.wsman_envelope import (
    ACTION_CREATE,
    COMMAND_DONE,
    ERROR_OPERATION_TIMEDOUT,
    NS_PWSH,
    NS_RSP,
    PWSH_RESOURCE,
    SIGNAL_TERMINATE,
    EnvelopeError,
    ShellEnvelopes,
    WSManFault,
    created_shell_id,
    parse_fault,
    parse_reply,
    received,
)

from winsim.wsman import envelope, fault_envelope, parse_request

URL = "https://win01.example:5986/wsman?a=1&b=<2>"
SHELL = "0F6E4D3C-1111-2222-3333-444455556666"
COMMAND = "7A7A7A7A-1111-2222-3333-444455556666"
ENVELOPES = ShellEnvelopes(URL)


def test_create_carries_the_creation_xml_idle_timeout_and_protocol_version() -> None:
    sent = ENVELOPES.create(SHELL, b"\x00fragments\xff", 180, 20)
    req = parse_request(sent.body)
    assert req.action_uri == ACTION_CREATE
    assert req.message_id == sent.message_id
    assert req.resource_uri == PWSH_RESOURCE
    assert req.shell_id is None  # the shell id goes in the body: the host keeps it
    assert req.operation_timeout == 20.0
    assert req.body is not None and req.body.get("ShellId") == SHELL
    creation = req.body.findtext(f"{{{NS_PWSH}}}creationXml")
    assert creation is not None and base64.b64decode(creation) == b"\x00fragments\xff"
    assert req.body.findtext(f"{{{NS_RSP}}}IdleTimeOut") == "PT180S"
    root = ET.fromstring(sent.body)
    option = root.find(".//{http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd}Option")
    assert option is not None
    assert (option.get("Name"), option.text) == ("protocolversion", "2.3")
    # the URL is escaped, not pasted
    to = root.findtext(".//{http://schemas.xmlsoap.org/ws/2004/08/addressing}To")
    assert to == URL


def test_create_without_an_idle_timeout_leaves_the_hosts_default() -> None:
    req = parse_request(ENVELOPES.create(SHELL, b"x", None, 20).body)
    assert req.body is not None and req.body.find(f"{{{NS_RSP}}}IdleTimeOut") is None


@pytest.mark.parametrize(
    ("build", "action", "command_id"),
    [
        (lambda: ENVELOPES.command(SHELL, COMMAND, b"create-pipeline", 20), "Command", COMMAND),
        (lambda: ENVELOPES.send(SHELL, COMMAND, b"more", 20), "Send", COMMAND),
        (lambda: ENVELOPES.send(SHELL, None, b"pool", 20), "Send", None),
        (lambda: ENVELOPES.receive(SHELL, COMMAND, 55), "Receive", COMMAND),
        (lambda: ENVELOPES.receive(SHELL, None, 55), "Receive", None),
        (lambda: ENVELOPES.signal(SHELL, COMMAND, SIGNAL_TERMINATE, 20), "Signal", COMMAND),
        (lambda: ENVELOPES.delete(SHELL, 5), "Delete", None),
    ],
)
def test_each_request_names_its_shell_and_command(
    build: object, action: str, command_id: str | None
) -> None:
    sent = build()  # type: ignore[operator]
    req = parse_request(sent.body)
    assert req.action == action
    assert req.shell_id == SHELL
    assert req.message_id == sent.message_id
    if action == "Delete":
        assert req.body is None
        return
    assert req.body is not None
    found = {el.get("CommandId") for el in req.body.iter() if el.get("CommandId")}
    assert found == ({command_id} if command_id else set())


def test_a_receive_asks_its_operation_timeout_and_fresh_message_ids() -> None:
    first, second = ENVELOPES.receive(SHELL, COMMAND, 55), ENVELOPES.receive(SHELL, COMMAND, 55)
    assert parse_request(first.body).operation_timeout == 55.0
    assert first.message_id != second.message_id
    # whole seconds, never zero
    assert parse_request(ENVELOPES.receive(SHELL, None, 0).body).operation_timeout == 1.0


def test_a_reply_must_relate_to_its_request() -> None:
    sent = ENVELOPES.delete(SHELL, 5)
    body = parse_reply(envelope("x/DeleteResponse", sent.message_id, "<x/>"), sent.message_id)
    assert body.tag.endswith("Body")
    with pytest.raises(EnvelopeError, match="RelatesTo"):
        parse_reply(envelope("x/DeleteResponse", "uuid:other", ""), sent.message_id)
    with pytest.raises(EnvelopeError, match="not XML"):
        parse_reply(b"<s:Envelope", sent.message_id)


def test_the_created_shell_id_is_read_back() -> None:
    reply = envelope(
        "r",
        "uuid:1",
        f'<rsp:Shell xmlns:rsp="{NS_RSP}"><rsp:ShellId>{SHELL}</rsp:ShellId></rsp:Shell>',
    )
    assert created_shell_id(parse_reply(reply, "uuid:1")) == SHELL
    with pytest.raises(EnvelopeError, match="no ShellId"):
        created_shell_id(parse_reply(envelope("r", "uuid:1", ""), "uuid:1"))


def test_receive_streams_are_joined_in_order_and_done_is_seen() -> None:
    a, b = base64.b64encode(b"first-").decode(), base64.b64encode(b"second").decode()
    body = (
        "<rsp:ReceiveResponse>"
        f'<rsp:Stream Name="stdout" CommandId="{COMMAND}">{a}</rsp:Stream>'
        f'<rsp:Stream Name="stdout" CommandId="{COMMAND}" End="true">{b}</rsp:Stream>'
        f'<rsp:Stream Name="stdout" CommandId="{COMMAND}"/>'
        f'<rsp:CommandState CommandId="{COMMAND}" State="{COMMAND_DONE}"/>'
        "</rsp:ReceiveResponse>"
    )
    got = received(parse_reply(envelope("r", "uuid:1", body), "uuid:1"))
    assert (got.data, got.done) == (b"first-second", True)
    running = body.replace(COMMAND_DONE, f"{NS_RSP}/CommandState/Running")
    assert not received(parse_reply(envelope("r", "uuid:1", running), "uuid:1")).done
    with pytest.raises(EnvelopeError, match="ReceiveResponse"):
        received(parse_reply(envelope("r", "uuid:1", ""), "uuid:1"))
    bad = body.replace(a, "!!not base64!!")
    with pytest.raises(EnvelopeError, match="base64"):
        received(parse_reply(envelope("r", "uuid:1", bad), "uuid:1"))


def test_a_wsman_fault_gives_its_code_and_message() -> None:
    reply = fault_envelope(
        "uuid:1", ERROR_OPERATION_TIMEDOUT, "timed out <here>", "win01", "w:TimedOut"
    )
    assert parse_fault(reply) == WSManFault(ERROR_OPERATION_TIMEDOUT, "timed out <here>")


def test_a_soap_fault_without_wsman_detail_gives_its_reason() -> None:
    reply = envelope(
        "f",
        "uuid:1",
        '<s:Fault><s:Reason><s:Text xml:lang="en-US">Access is denied.</s:Text></s:Reason>'
        "</s:Fault>",
    )
    assert parse_fault(reply) == WSManFault(None, "Access is denied.")


@pytest.mark.parametrize("body", [b"Internal Server Error", b"", envelope("r", "uuid:1", "")])
def test_a_body_that_is_no_fault_is_none(body: bytes) -> None:
    assert parse_fault(body) is None
