"""Configuration as versioned data: every key round-trips, every change is a version with its author, a diff
writes nothing, a rollback restores routing, and no secret is ever written out."""

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse

from apps.audit.models import AuditEvent
from apps.configuration.models import ConfigVersion
from apps.configuration.services import ConfigError, config_export, config_import
from apps.configuration.versions import config_apply, config_preview
from apps.notifications.models import WebhookEndpoint
from apps.routing.models import Delivery, Destination, RoutingDecision, RoutingRule
from apps.studies.models import Study

from ..support.configuration import FULL, configuration_rows, round_trip
from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]

TWO_PACS = """
destinations:
  - {name: pacs-a, ae_title: PACS_A, host: 127.0.0.1, port: 104}
  - {name: pacs-b, ae_title: PACS_B, host: 127.0.0.1, port: 105}
rules:
  - {name: CT to the PACS, priority: 10, match: {modality: CT}, destinations: [pacs-a]}
callers:
  - {ae_title: CT_NORTH}
"""


def test_a_configuration_using_every_key_round_trips_on_postgresql():
    assert round_trip() == []


def test_a_configuration_using_every_key_round_trips_on_the_embedded_default(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'router.sqlite3'}", "CELERY_BROKER_URL": "memory://"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.configuration"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


def test_the_full_document_sets_every_section_it_names():
    config_import(FULL)
    document = config_export()
    for expected in (
        "sets_online: true",
        "expires_on: 2027-06-30",
        "institution: South Clinic",
        "window_minutes: 2",
        "institution: North Hospital",
        "phi_approved: true",
        "secret: env:ROUTER_RIS_HOOK",
        "storage_commitment: true",
        "forward_mode: on_receipt",
    ):
        assert expected in document


def counts() -> dict:
    rows = configuration_rows()
    return {name: len(value) for name, value in rows.items()} | {"versions": ConfigVersion.objects.count()}


def test_diff_writes_nothing_and_names_each_change(tmp_path):
    config_apply(TWO_PACS, author="alice")
    changed = (
        TWO_PACS.replace("priority: 10", "priority: 20")
        .replace("port: 105}", "port: 105}\n  - {name: pacs-c, ae_title: PACS_C, host: 127.0.0.1, port: 106}")
        .replace("  - {ae_title: CT_NORTH}", "  - {ae_title: CT_SOUTH}")
    )
    before, export_before = counts(), config_export()
    out = StringIO()
    path = tmp_path / "changed.yaml"
    path.write_text(changed)
    call_command("importconfig", str(path), "--diff", "--prune", stdout=out)
    text = out.getvalue()
    assert counts() == before and config_export() == export_before
    assert "+ destinations: pacs-c" in text
    assert "~ rules: CT to the PACS\n    priority: 10 -> 20" in text
    assert "+ callers: CT_SOUTH / " in text and "- callers: CT_NORTH / " in text
    assert "Nothing was written (--diff)." in text
    assert not Destination.objects.filter(name="pacs-c").exists()


def test_a_document_that_changes_nothing_makes_no_version():
    first = config_apply(TWO_PACS, author="alice")
    assert first.version is not None and first.version.author == "alice" and first.version.source == "import"
    again = config_apply(config_export(), author="bob")
    assert again.version is None and again.diff.empty
    assert ConfigVersion.objects.exclude(source="baseline").count() == 1


def test_prune_removes_what_the_document_leaves_out_and_disables_what_history_keeps(storage, tmp_path):
    config_apply(TWO_PACS + "  - {ae_title: CT_OLD}\n", author="alice")
    study = Study.objects.create(study_instance_uid="1.2.3")
    Delivery.objects.create(study=study, destination=Destination.objects.get(name="pacs-b"))
    document = TWO_PACS.replace("  - {name: pacs-b, ae_title: PACS_B, host: 127.0.0.1, port: 105}\n", "").replace(
        "callers:\n  - {ae_title: CT_NORTH}\n", "callers: []\n"
    )
    report, diff = config_preview(document, prune=True)
    assert {c.kind for c in diff.changes} == {"removed", "changed"}
    applied = config_apply(document, prune=True, author="alice")
    assert sorted(applied.report.removed) == ["caller CT_NORTH@*", "caller CT_OLD@*"]
    assert applied.report.disabled == ["destination pacs-b (PACS_B@127.0.0.1:105)"]
    assert not Destination.objects.get(name="pacs-b").enabled  # kept: its delivery refers to it


def test_a_rule_edited_in_admin_then_rolled_back_routes_the_next_study_by_the_old_rule(
    client, storage, tmp_path, default_mapping, django_capture_on_commit_callbacks
):
    config_apply(TWO_PACS, author="alice")
    bob = User.objects.create_superuser("bob", "bob@example.org", "pw")
    carol = User.objects.create_superuser("carol", "carol@example.org", "pw")
    rule = RoutingRule.objects.get()
    before_bob = ConfigVersion.objects.order_by("-pk").first()

    client.force_login(bob)
    url = reverse("admin:routing_routingrule_change", args=[rule.pk])
    data = form_data(client.get(url).content.decode())
    data["destinations"] = [str(Destination.objects.get(name="pacs-b").pk)]
    data["_save"] = "Save"
    with django_capture_on_commit_callbacks(execute=True):  # the test's transaction stands for the request's
        response = client.post(url, data)
    assert response.status_code == 302, re.findall(r"errorlist[^>]*>(.*?)</ul>", response.content.decode(), re.S)
    assert list(RoutingRule.objects.get().destinations.values_list("name", flat=True)) == ["pacs-b"]
    bobs = ConfigVersion.objects.order_by("-pk").first()
    assert (bobs.author, bobs.source, bobs.user) == ("bob", "admin", bob)
    assert "~ rules: CT to the PACS\n    destinations: [pacs-a] -> [pacs-b]" in bobs.summary

    client.force_login(carol)
    changelist = reverse("admin:configuration_configversion_changelist")
    client.post(changelist, {"action": "restore", "_selected_action": [before_bob.pk]})
    carols = ConfigVersion.objects.order_by("-pk").first()
    assert (carols.author, carols.source, carols.restored_from) == ("carol", "rollback", before_bob)
    assert list(RoutingRule.objects.get().destinations.values_list("name", flat=True)) == ["pacs-a"]
    audit = AuditEvent.objects.get(action="config_rollback")
    assert audit.username == "carol" and f"version {before_bob.pk}" in audit.detail

    _, paths = synthetic_study(tmp_path / "ct", count=1, modality="CT")
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="route")
    assert RoutingDecision.objects.get(study_id=study_id).destinations == ["pacs-a"]

    page = client.get(changelist).content.decode()
    assert "bob" in page and "carol" in page and "alice" in page


def test_the_admin_review_page_shows_the_diff_and_applies_only_when_asked(client):
    config_apply(TWO_PACS, author="alice")
    client.force_login(User.objects.create_superuser("dana", "dana@example.org", "pw"))
    url = reverse("admin:configuration_review")
    versions = ConfigVersion.objects.count()
    page = client.post(url, {"document": TWO_PACS.replace("port: 104", "port: 204"), "preview": "1"})
    text = page.content.decode()
    assert "0 added, 1 changed, 0 removed" in text and "204" in text
    assert Destination.objects.get(name="pacs-a").port == 104 and ConfigVersion.objects.count() == versions
    client.post(url, {"document": TWO_PACS.replace("port: 104", "port: 204"), "apply": "1"})
    assert Destination.objects.get(name="pacs-a").port == 204
    assert ConfigVersion.objects.order_by("-pk").first().author == "dana"


def test_secrets_never_appear_in_an_export_a_version_or_a_diff(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTER_RIS_HOOK", "hook-secret-value-1")
    monkeypatch.setenv("ROUTER_CLOUD_TOKEN", "cloud-token-value-2")
    monkeypatch.setenv("ROUTER_SECRET_RESEARCH", "research-secret-value-3-long-enough-for-hmac")
    applied = config_apply(FULL, author="alice")
    legacy = WebhookEndpoint.objects.create(name="legacy", url="https://old.example.org", secret="literal-value-4")
    changed = FULL.replace("window_minutes: 2", "window_minutes: 3")
    _, diff = config_preview(changed)
    out = StringIO()
    path = tmp_path / "changed.yaml"
    path.write_text(changed)
    call_command("importconfig", str(path), "--diff", stdout=out)
    written = [config_export(), str(diff), str(applied.diff), out.getvalue()]
    written += [v.document + v.summary for v in ConfigVersion.objects.all()]
    for secret in ("hook-secret-value-1", "cloud-token-value-2", "research-secret-value-3", "literal-value-4"):
        assert not any(secret in text for text in written), secret
    assert "env:ROUTER_RIS_HOOK" in written[0]  # where it is, by reference
    assert legacy.name in written[0]
    with pytest.raises(ConfigError, match=r"webhooks\[0\] \(ris\): secret: env:VARIABLE or file:/path"):
        config_import(FULL.replace('secret: "env:ROUTER_RIS_HOOK"', "secret: hook-secret-value-1"))


def test_importconfig_version_rolls_back_and_an_unknown_version_is_refused():
    config_apply(TWO_PACS, author="alice")
    first = ConfigVersion.objects.order_by("-pk").first()
    config_apply(TWO_PACS.replace("port: 104", "port: 304"), author="bob")
    out = StringIO()
    call_command("importconfig", "--version", str(first.pk), "--by", "carol", stdout=out)
    assert Destination.objects.get(name="pacs-a").port == 104
    assert f"Restored version {first.pk} as version" in out.getvalue()
    assert ConfigVersion.objects.order_by("-pk").first().author == "carol"
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="there is no version 99999"):
        call_command("importconfig", "--version", "99999")


class _Form(HTMLParser):
    """The values a browser would submit from the admin's change form."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, object] = {}
        self._select: str | None = None
        self._multiple = False
        self._textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        name = a.get("name")
        if tag == "input" and name and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                return
            self.data[name] = a.get("value", "on" if a.get("type") in ("checkbox", "radio") else "")
        elif tag == "select" and name:
            self._select, self._multiple = name, "multiple" in a
            self.data.setdefault(name, [] if self._multiple else "")
        elif tag == "option" and self._select and "selected" in a:
            if self._multiple:
                self.data[self._select].append(a.get("value", ""))
            else:
                self.data[self._select] = a.get("value", "")
        elif tag == "textarea" and name:
            self._textarea = name
            self.data[name] = ""

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea] += data


def form_data(html: str) -> dict:
    parser = _Form()
    parser.feed(html)
    return {k: v for k, v in parser.data.items() if "__prefix__" not in k}
