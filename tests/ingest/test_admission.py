from apps.ingest.services import caller_allowed

ALLOW = [("CT_NORTH", "10.0.0.5"), ("MR_ANY", "")]


def test_an_empty_allow_list_admits_everyone():
    assert caller_allowed([], ae_title="ANYONE", host="1.2.3.4")


def test_a_listed_title_is_admitted_only_from_its_host():
    assert caller_allowed(ALLOW, ae_title="CT_NORTH", host="10.0.0.5")
    assert not caller_allowed(ALLOW, ae_title="CT_NORTH", host="10.0.0.6")


def test_a_title_listed_without_a_host_is_admitted_from_anywhere():
    assert caller_allowed(ALLOW, ae_title="MR_ANY  ", host="192.168.1.1")


def test_an_unknown_title_is_refused():
    assert not caller_allowed(ALLOW, ae_title="STRANGER", host="10.0.0.5")
