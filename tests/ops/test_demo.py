"""The first minute: `loaddemo` and `senddemo` on real processes show studies routed, delivered and assigned."""

import subprocess

import pytest
from django.core.management import CommandError, call_command

from apps.reading.models import Radiologist
from apps.routing.models import Delivery, Destination
from apps.studies.models import Stage, Study

from ..support.dicom import shipped, storescu
from ..support.processes import python_manage, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_senddemo_shows_every_demo_study_routed_delivered_and_assigned(start_scp, start_worker, storescp, service_env):
    _, pacs_port, pacs_folder = storescp("DEMO")
    call_command("loaddemo", "--pacs-port", str(pacs_port))  # as `make run DEMO_PACS_PORT=N` (11113 may be taken)
    assert set(Destination.objects.values_list("port", flat=True)) == {pacs_port}
    _, port = start_scp()
    start_worker()

    result = subprocess.run(
        python_manage("senddemo", "--port", str(port), "--wait", "90", "--web", "http://router.test"),
        env=service_env,
        capture_output=True,
        text=True,
        timeout=150,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "sending    [##############################] 13/13" in out
    assert "routing    [##############################] 4/4" in out
    lines = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines() if line.startswith("  CT ")}
    assert "neuro-pacs delivered" in lines["CT HEAD"] and "A. Chen" in lines["CT HEAD"]
    assert "body-pacs delivered" in lines["CT CHEST"] and "B. Baker" in lines["CT CHEST"]
    assert "body-pacs delivered" in lines["CT ABDOMEN"] and "C. Diaz" in lines["CT ABDOMEN"]
    assert "http://router.test/worklist/" in out
    assert "Demo^" not in out  # names stay out of what is printed
    assert Study.objects.get(study_description="CT HEAD STROKE PROTOCOL").priority == "STAT"
    assert len(list(pacs_folder.iterdir())) == 13


def test_loaddemo_is_idempotent_and_gives_the_demo_logins():
    call_command("loaddemo")
    call_command("loaddemo")
    assert Radiologist.objects.count() == 4
    assert Radiologist.objects.get(user__username="achen").user.check_password("demo")


def test_the_printed_demo_logins_work(client):
    """`make run` prints admin / demo for /admin/ and a radiologist / demo for /worklist/. Through the login
    forms: the lockout backend refuses an authentication without a request (as client.login makes)."""
    call_command("loaddemo")

    admin_login = client.post("/admin/login/", {"username": "admin", "password": "demo", "next": "/admin/"})
    assert admin_login.status_code == 302, admin_login.content[:300]
    assert client.get("/admin/").status_code == 200
    client.logout()
    assert client.post("/accounts/login/", {"username": "achen", "password": "demo"}).status_code == 302
    assert client.get("/worklist/").status_code == 200


def test_loaddemo_is_refused_in_production(settings):
    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="not production"):
        call_command("loaddemo")


def test_pydicoms_own_files_as_shipped_are_routed_and_assigned_by_the_demo(start_scp, start_worker, storescp):
    """What a new user sends first: pydicom's CT and MR test files, no body part, sent with storescu under
    its default title. The demo's fallback rule sends them to body-pacs and D. Evans (general radiology)
    reads them."""
    call_command("loaddemo")
    _, pacs_port, pacs_folder = storescp("DEMO")
    Destination.objects.update(port=pacs_port)
    _, port = start_scp()
    start_worker()

    sent = storescu(port, [shipped("ct"), shipped("mr")], calling="STORESCU")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    def settled() -> bool:
        notified = Study.objects.filter(stage=Stage.NOTIFIED).count() == 2
        return notified and Delivery.objects.filter(state=Delivery.State.DELIVERED).count() == 2

    wait_until(settled, timeout=60, what="two studies notified and delivered")
    for study in Study.objects.all():
        [delivery] = Delivery.objects.filter(study=study)
        assert (delivery.destination.name, delivery.state) == ("body-pacs", Delivery.State.DELIVERED)
        assert study.assignments.get().radiologist.user.username == "devans"
    assert len(list(pacs_folder.iterdir())) == 2
