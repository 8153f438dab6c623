"""Delivery by STOW-RS to Orthanc with its DICOMweb plugin (Debian's orthanc-dicomweb): a 60-instance study
arrives whole; Orthanc stopped mid-delivery and started again gets every instance once; an instance Orthanc
refuses is a failure of that instance, not a study-wide success."""

import threading

import pytest
from pydicom import dcmread

from apps.configuration.services import config_import
from apps.routing.models import Delivery, DeliveryItem, Destination
from apps.routing.services import delivery_send, destinations_check

from ..support.dicom import synthetic_study
from ..support.orthanc import DICOMWEB_PLUGIN, Orthanc
from ..support.pipeline import receive_study, run_steps
from ..support.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Orthanc refuses an instance whose ImageComments say so: a conflict the router must see per instance.
REFUSE = """
function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.ImageComments ~= 'refuse me'
end
"""


@pytest.fixture
def orthanc_web(tmp_path, log_dir):
    lua = tmp_path / "filter.lua"
    lua.write_text(REFUSE)
    server = Orthanc(
        tmp_path / "orthanc",
        log_dir=log_dir,
        extra={
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LuaScripts": [str(lua)],
        },
    )
    yield server
    server.stop()


def route(storage, orthanc, paths, *, batch_count: int = 10) -> int:
    # Debian's plugin (1.7) answers "stored" for an instance Orthanc did not store: verify by QIDO-RS.
    config_import(
        f"""
destinations:
  - name: orthanc-web
    protocol: dicomweb
    dicomweb: {{url: "{orthanc.dicomweb_url}", batch_count: {batch_count}, timeout: 30, verify: true}}
    retry_base_delay: 1
rules:
  - {{name: all, priority: 1, match: {{modality: CT}}, destinations: [orthanc-web]}}
"""
    )
    [delivery_id] = run_steps(receive_study(storage, paths), until="route")
    return delivery_id


def new_instances(orthanc) -> int:
    """How many instances Orthanc created (a second copy of one it holds creates none)."""
    changes = orthanc._get("/changes?limit=10000")["Changes"]
    return sum(1 for change in changes if change["ChangeType"] == "NewInstance")


def test_a_60_instance_study_arrives_whole(orthanc_web, storage, tmp_path, default_mapping):
    _, paths = synthetic_study(tmp_path / "in", count=60)
    delivery_id = route(storage, orthanc_web, paths)

    assert delivery_send(delivery_id=delivery_id) == "delivered"

    assert orthanc_web.statistics()["CountInstances"] == 60
    stored = {orthanc_web._get(f"/instances/{i}/tags?simplify")["SOPInstanceUID"] for i in orthanc_web.instances()}
    assert stored == {str(dcmread(p).SOPInstanceUID) for p in paths}
    assert DeliveryItem.objects.filter(delivery_id=delivery_id, state="delivered").count() == 60
    assert Destination.objects.get(name="orthanc-web").health == "up"


def test_orthanc_stopped_mid_delivery_and_started_again_gets_every_instance_once(
    orthanc_web, storage, tmp_path, default_mapping
):
    _, paths = synthetic_study(tmp_path / "in", count=60)
    delivery_id = route(storage, orthanc_web, paths, batch_count=1)
    outcome = []
    sending = threading.Thread(target=lambda: outcome.append(delivery_send(delivery_id=delivery_id)))
    sending.start()
    wait_until(lambda: orthanc_web.statistics()["CountInstances"] >= 6, timeout=30, what="the first batches")
    orthanc_web.process.popen.kill()  # stopped at once, in the middle of the delivery
    orthanc_web.process.stop()
    sending.join(60)
    assert outcome == ["pending"]
    assert 0 < DeliveryItem.objects.filter(delivery_id=delivery_id, state="delivered").count() < 60

    orthanc_web.start()
    destinations_check(interval=0)  # the health check finds it back: its deliveries are due again
    for _ in range(5):  # a bounded number of attempts, as the sweeper would make them
        if delivery_send(delivery_id=delivery_id) == "delivered":
            break
        Delivery.objects.filter(pk=delivery_id).update(next_attempt_at=Delivery.objects.get(pk=delivery_id).created_at)

    assert Delivery.objects.get(pk=delivery_id).state == "delivered"
    assert orthanc_web.statistics()["CountInstances"] == 60
    assert new_instances(orthanc_web) == 60  # each instance created once


def test_an_instance_orthanc_refuses_is_that_instances_failure_not_a_study_wide_success(
    orthanc_web, storage, tmp_path, default_mapping
):
    _, paths = synthetic_study(tmp_path / "in", count=5)
    refused = dcmread(paths[2])
    refused.ImageComments = "refuse me"
    refused.save_as(paths[2])
    delivery_id = route(storage, orthanc_web, paths)

    state = delivery_send(delivery_id=delivery_id)

    items = {
        i.instance.sop_instance_uid: i
        for i in DeliveryItem.objects.filter(delivery_id=delivery_id).select_related("instance")
    }
    assert items[str(refused.SOPInstanceUID)].state != "delivered"
    # Debian's plugin 1.7 answers "stored" for it: the QIDO-RS check finds it is not.
    assert "QIDO-RS search does not find it" in items[str(refused.SOPInstanceUID)].error
    assert sum(1 for i in items.values() if i.state == "delivered") == 4
    assert state in ("pending", "failed")
    assert orthanc_web.statistics()["CountInstances"] == 4
