import pytest

from apps.core import tls
from apps.ingest.services import Caller, Peer, caller_allowed, caller_may

from ..support.certs import Authority

ALLOW = [Caller("CT_NORTH", "10.0.0.5"), Caller("MR_ANY", "")]


def plain(host: str) -> Peer:
    return Peer(host=host)


def test_an_empty_allow_list_admits_everyone():
    assert caller_allowed([], ae_title="ANYONE", peer=plain("1.2.3.4"))


def test_a_listed_title_is_admitted_only_from_its_host():
    assert caller_allowed(ALLOW, ae_title="CT_NORTH", peer=plain("10.0.0.5"))
    assert not caller_allowed(ALLOW, ae_title="CT_NORTH", peer=plain("10.0.0.6"))


def test_a_title_listed_without_a_host_is_admitted_from_anywhere():
    assert caller_allowed(ALLOW, ae_title="MR_ANY  ", peer=plain("192.168.1.1"))


def test_an_unknown_title_is_refused():
    assert not caller_allowed(ALLOW, ae_title="STRANGER", peer=plain("10.0.0.5"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ours, theirs = Authority(folder / "ours", "Hospital CA"), Authority(folder / "theirs", "Other CA")
    return ours, theirs, ours.issue("ct-north"), theirs.issue("ct-north")


def test_a_caller_that_must_use_tls_is_refused_on_the_plain_port():
    allow = [Caller("CT_NORTH", tls_required=True)]
    assert not caller_allowed(allow, ae_title="CT_NORTH", peer=plain("10.0.0.5"))
    assert caller_allowed(allow, ae_title="CT_NORTH", peer=Peer("10.0.0.5", tls=True))


def test_a_caller_bound_to_a_ca_needs_a_certificate_that_ca_issued(pki):
    ours, _, mine, forged = pki
    allow = [Caller("CT_NORTH", client_ca_file=ours.ca_file)]
    assert caller_allowed(allow, ae_title="CT_NORTH", peer=Peer("10.0.0.5", tls=True, certificate=mine.der))
    assert not caller_allowed(allow, ae_title="CT_NORTH", peer=Peer("10.0.0.5", tls=True, certificate=forged.der))
    assert not caller_allowed(allow, ae_title="CT_NORTH", peer=Peer("10.0.0.5", tls=True))  # no certificate
    assert not caller_allowed(allow, ae_title="CT_NORTH", peer=Peer("10.0.0.5", certificate=mine.der))  # plain


def test_a_caller_bound_to_a_subject_or_fingerprint_needs_that_very_certificate(pki):
    ours, _, mine, forged = pki
    by_name = [Caller("CT_NORTH", client_ca_file=ours.ca_file, client_subject="ct-north")]
    assert caller_allowed(by_name, ae_title="CT_NORTH", peer=Peer("h", tls=True, certificate=mine.der))
    by_rfc4514 = [Caller("CT_NORTH", client_subject="CN=ct-north,O=Router tests")]
    assert caller_allowed(by_rfc4514, ae_title="CT_NORTH", peer=Peer("h", tls=True, certificate=mine.der))
    other_name = [Caller("CT_NORTH", client_subject="mr-south")]
    assert not caller_allowed(other_name, ae_title="CT_NORTH", peer=Peer("h", tls=True, certificate=mine.der))
    colons = ":".join(tls.fingerprint(mine.der)[i : i + 2] for i in range(0, 64, 2)).upper()
    pinned = [Caller("CT_NORTH", client_sha256=colons)]
    assert caller_allowed(pinned, ae_title="CT_NORTH", peer=Peer("h", tls=True, certificate=mine.der))
    assert not caller_allowed(pinned, ae_title="CT_NORTH", peer=Peer("h", tls=True, certificate=forged.der))


def test_a_ca_file_that_cannot_be_read_admits_nobody(tmp_path, pki):
    _, _, mine, _ = pki
    allow = [Caller("CT_NORTH", client_ca_file=str(tmp_path / "missing.pem"))]
    assert not caller_allowed(allow, ae_title="CT_NORTH", peer=Peer("h", tls=True, certificate=mine.der))


def test_nobody_may_query_or_retrieve_unless_an_entry_says_so():
    assert not caller_may([], ae_title="ANYONE", peer=plain("10.0.0.5"), what="query")
    allow = [Caller("WS1", "10.0.0.7", may_query=True), Caller("PACS", may_query=True, may_retrieve=True)]
    assert caller_may(allow, ae_title="WS1", peer=plain("10.0.0.7"), what="query")
    assert not caller_may(allow, ae_title="WS1", peer=plain("10.0.0.7"), what="retrieve")
    assert not caller_may(allow, ae_title="WS1", peer=plain("10.0.0.8"), what="query")  # its host only
    assert caller_may(allow, ae_title="PACS", peer=plain("10.9.9.9"), what="retrieve")
    assert not caller_may(allow, ae_title="CT_NORTH", peer=plain("10.0.0.5"), what="query")


def test_querying_keeps_the_entrys_tls_terms():
    allow = [Caller("WS1", tls_required=True, may_query=True)]
    assert not caller_may(allow, ae_title="WS1", peer=plain("10.0.0.7"), what="query")
    assert caller_may(allow, ae_title="WS1", peer=Peer("10.0.0.7", tls=True), what="query")
