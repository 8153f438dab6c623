"""received_instance_register: the row the SCP commits before it answers success."""

import pytest
from django.db import connection, transaction

from apps.studies.models import ReceivedInstance
from apps.studies.services import received_instance_register


def register(uid: str, path: str = "instances/a.dcm") -> bool:
    return received_instance_register(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid="1.2.3",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=path,
        size=10,
        calling_ae_title="MODALITY",
        called_ae_title="ROUTER",
        peer_address="127.0.0.1",
    )


@pytest.mark.django_db(transaction=True)
def test_in_autocommit_as_the_scp_runs_the_row_is_committed_and_a_duplicate_is_kept_once():
    assert not connection.in_atomic_block
    assert register("1.2.3.4") is True
    assert register("1.2.3.4", path="instances/b.dcm") is False
    assert not connection.in_atomic_block and not connection.needs_rollback
    assert list(ReceivedInstance.objects.values_list("path", flat=True)) == ["instances/a.dcm"]


@pytest.mark.django_db
def test_inside_a_caller_s_transaction_a_duplicate_does_not_break_it():
    with transaction.atomic():
        assert register("1.2.3.4") is True
        assert register("1.2.3.4", path="instances/b.dcm") is False
        assert ReceivedInstance.objects.count() == 1  # the transaction is still usable
