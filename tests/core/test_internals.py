"""The start-up check of the library internals we patch: it passes on the pinned versions, and refuses a
version or a part the patches were not written for."""

from apps.core import internals
from apps.core.checks import check_patched_internals


def test_the_pinned_libraries_fit_every_patch():
    assert check_patched_internals(None) == []


def test_another_version_is_refused(monkeypatch):
    monkeypatch.setattr(internals.metadata, "version", lambda package: "9.9.9")

    errors = check_patched_internals(None)

    assert {e.id for e in errors} == {"core.E005"}
    assert any("pynetdicom is 9.9.9, written for 3.0.4" in e.msg for e in errors)
    assert any("celery is 9.9.9" in e.msg for e in errors) and any("kombu is 9.9.9" in e.msg for e in errors)


def test_a_renamed_part_is_refused(monkeypatch):
    from pynetdicom.dul import DULServiceProvider

    monkeypatch.delattr(DULServiceProvider, "_read_pdu_data")

    [error] = check_patched_internals(None)

    assert "apps.ingest.guard" in error.msg and "_read_pdu_data is missing" in error.msg


def test_a_part_whose_source_changed_is_refused(monkeypatch):
    patch = internals.Patch(
        "apps.x", "pynetdicom", "3.0.4", ("pynetdicom.dul:DULServiceProvider.__init__ source:nope",)
    )
    monkeypatch.setattr(internals, "PATCHES", (patch,))

    [error] = check_patched_internals(None)

    assert "no longer has nope" in error.msg
