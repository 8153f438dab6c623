"""The transform profile admin: a preview on a stored instance (nothing sent), and the pseudonym table import."""

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from pydicom import dcmread

from apps.transforms.models import TransformProfile
from apps.transforms.services import pseudonyms_import

from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps


@pytest.fixture
def admin_client(client, db):
    client.force_login(User.objects.create_superuser("admin", "admin@example.org", "pw"))
    return client


def test_a_preview_shows_each_changed_attribute_before_and_after_and_sends_nothing(
    admin_client, storage, tmp_path, default_mapping
):
    _, paths = synthetic_study(tmp_path / "in", count=1, patient_name="Doe^Jane")
    run_steps(receive_study(storage, paths), until="persist")
    profile = TransformProfile.objects.create(
        name="north",
        operations=[
            {"op": "prefix", "tag": "AccessionNumber", "value": "N-"},
            {"op": "set", "tag": "InstitutionName", "value": "North Hospital"},
        ],
    )
    uid = dcmread(paths[0]).SOPInstanceUID
    url = reverse("admin:transforms_preview", args=[profile.pk])
    assert (
        b"Preview on a stored instance"
        in admin_client.get(reverse("admin:transforms_transformprofile_change", args=[profile.pk])).content
    )

    page = admin_client.post(url, {"sop_instance_uid": uid}).content.decode()

    assert "2 attribute(s) changed" in page
    assert "AccessionNumber" in page and "N-ACC" in page and "North Hospital" in page
    assert "No stored instance" in admin_client.post(url, {"sop_instance_uid": "1.2.3"}).content.decode()


def test_a_deidentifying_preview_without_its_secret_says_why(admin_client, storage, tmp_path, default_mapping):
    _, paths = synthetic_study(tmp_path / "in", count=1)
    run_steps(receive_study(storage, paths), until="persist")
    profile = TransformProfile.objects.create(name="research", deidentify=True, secret="env:ROUTER_NO_SUCH_SECRET")
    page = admin_client.post(
        reverse("admin:transforms_preview", args=[profile.pk]), {"sop_instance_uid": dcmread(paths[0]).SOPInstanceUID}
    ).content.decode()
    assert "missing or shorter than 16 bytes" in page


def test_a_pseudonym_table_imports_from_csv_and_refuses_a_pseudonym_given_twice(db, tmp_path):
    profile = TransformProfile.objects.create(name="ai", deidentify=True, use_pseudonym_table=True)
    assert pseudonyms_import(profile=profile, text="patient_id,pseudonym\nP-1,A1\nP-2,A2\n") == (2, 0)
    assert pseudonyms_import(profile=profile, text="P-1,A1\nP-2,B2\nP-3,A3\n") == (1, 1)
    with pytest.raises(ValueError, match="more than one patient"):
        pseudonyms_import(profile=profile, text="P-4,X\nP-5,X\n")
    with pytest.raises(ValueError, match="line 2"):
        pseudonyms_import(profile=profile, text="P-6,Y\nbroken\n")
    table = tmp_path / "table.csv"
    table.write_text("P-1,A1\n")
    call_command("importpseudonyms", "ai", str(table), "--replace")
    assert dict(profile.pseudonyms.values_list("patient_id", "pseudonym")) == {"P-1": "A1"}
    with pytest.raises(CommandError, match="no transform profile"):
        call_command("importpseudonyms", "nobody", str(table))


def test_a_preview_needs_the_right_to_change_profiles_and_is_audited(admin_client, storage, tmp_path, db):
    from django.test import Client

    from apps.audit.models import AuditEvent

    profile = TransformProfile.objects.create(name="north")
    url = reverse("admin:transforms_preview", args=[profile.pk])
    viewer = Client()
    viewer.force_login(User.objects.create(username="viewer", is_staff=True))  # staff, no permission
    assert viewer.post(url, {"sop_instance_uid": "1.2.3"}).status_code == 403
    admin_client.post(url, {"sop_instance_uid": "1.2.3"})
    assert AuditEvent.objects.filter(action="transforms.preview", detail__contains="1.2.3").count() == 1
