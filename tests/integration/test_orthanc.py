"""Orthanc as a real destination PACS, next to dcmtk's storescp: one study routed to both."""

import pytest

from apps.configuration.services import config_import
from apps.routing.models import Delivery
from apps.routing.services import delivery_send

from ..support.config import ACHEN_ON_SHIFT
from ..support.dicom import synthetic_study
from ..support.orthanc import Orthanc
from ..support.pipeline import receive_study, run_steps

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CONFIG = (
    """
destinations:
  - {name: orthanc, ae_title: %(orthanc_aet)s, host: 127.0.0.1, port: %(orthanc_port)d}
  - {name: archive, ae_title: ARCHIVE, host: 127.0.0.1, port: %(archive_port)d}
rules:
  - {name: CT to both, priority: 10, match: {modality: CT}, destinations: [orthanc, archive]}
"""
    + ACHEN_ON_SHIFT
)


@pytest.fixture
def orthanc(log_dir, tmp_path):
    server = Orthanc(tmp_path / "orthanc", log_dir=log_dir)
    yield server
    server.stop()


def test_orthanc_receives_a_study_routed_to_two_destinations(storage, default_mapping, tmp_path, storescp, orthanc):
    _, archive_port, archive_folder = storescp("ARCHIVE")
    config_import(
        CONFIG % {"orthanc_aet": orthanc.ae_title, "orthanc_port": orthanc.dicom_port, "archive_port": archive_port}
    )
    _, paths = synthetic_study(tmp_path / "modality", count=6)
    due = run_steps(receive_study(storage, paths))
    assert len(due) == 2

    assert [delivery_send(delivery_id=pk) for pk in due] == ["delivered", "delivered"]
    assert sorted(Delivery.objects.values_list("destination__name", "state")) == [
        ("archive", "delivered"),
        ("orthanc", "delivered"),
    ]
    assert orthanc.instance_count() == 6
    assert orthanc.statistics()["CountInstances"] == 6
    assert len(list(archive_folder.iterdir())) == 6

    # A delivered delivery is not ours to send again: nothing reaches Orthanc twice.
    assert [delivery_send(delivery_id=pk) for pk in due] == [None, None]
    assert orthanc.instance_count() == 6
