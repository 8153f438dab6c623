"""Copies made ahead of the sender by the helper process (apps/transforms/ahead.py): the same bytes and the same
holds as in the delivering process, sent in order to a real dcmtk storescp with the held ones skipped, and
nothing lost when the helper dies half way."""

import hashlib
import os
import signal
from dataclasses import dataclass

import pytest
from pydicom import dcmread

from apps.routing import dicom_send, transformed
from apps.transforms import ahead
from apps.transforms.engine import Operation, Profile

from ..support.dicom import synthetic_study

SECRET = b"ahead-secret-0123456789abcdef0123"
RESEARCH = Profile("research", deidentify=True, options=frozenset({"retain_longitudinal_modified_dates"}))
SITE = Profile("site", operations=(Operation("prefix", "AccessionNumber", "NE-"),))


@dataclass(frozen=True)
class Item:
    """A stand-in for a delivery item: Prepared.held is keyed by its pk."""

    pk: str


def sources(tmp_path, count: int, *, burned: tuple[int, ...] = ()) -> list[transformed.Source]:
    _, paths = synthetic_study(tmp_path / "in", count=count, patient_name="Doe^Jane")
    out = []
    for pk, path in enumerate(paths, start=1):
        ds = dcmread(path)
        if pk - 1 in burned:
            ds.BurnedInAnnotation = "YES"
            ds.save_as(path)
        uid = str(ds.SOPInstanceUID)
        out.append(
            transformed.Source(Item(f"item-{pk}"), pk, path, str(ds.SOPClassUID), ds.file_meta.TransferSyntaxUID, uid)
        )
    return out


def made(prepared: transformed.Prepared) -> list[tuple[str, str, str]]:
    return [
        (str(f.path.name), sha, uid)
        for f, sha, uid in zip(prepared.files, prepared.sha256, prepared.sent_uids, strict=True)
    ]


@pytest.mark.parametrize("profile", [RESEARCH, SITE], ids=["research", "site"])
def test_the_helper_makes_the_same_copies_and_holds_as_the_delivering_process(storage, tmp_path, profile):
    given = sources(tmp_path, 6, burned=(2,))

    here = transformed.prepare_files(profile, SECRET, given, label="here")
    digests_here = [hashlib.sha256(f.path.read_bytes()).hexdigest() for f in here.files]
    there = transformed.prepare_files(profile, SECRET, given, label="there", ahead=True)
    assert there.maker is not None and all(f.ready is not None for f in there.files)
    for file in there.files:
        file.ready()
    helper = ahead._helper.process
    there.finish()

    assert helper is not None and helper.pid != os.getpid() and helper.poll() is None  # a process of its own
    assert made(there) == made(here) and there.held == here.held
    assert digests_here == there.sha256 == here.sha256  # the ledger's digest is of the bytes written
    if profile is RESEARCH:
        assert list(here.held) == ["item-3"] and "BurnedInAnnotation is YES" in here.held["item-3"]
        assert all(uid for _, _, uid in made(here))  # de-identified copies carry new SOP Instance UIDs
    else:
        assert here.held == {} and len(here.files) == 6
    transformed.clean(here)
    transformed.clean(there)
    assert not here.folder.exists() and not there.folder.exists()


def test_a_held_copy_is_skipped_in_order_and_the_rest_reach_the_destination(storage, tmp_path, storescp):
    _, port, folder = storescp("RESEARCH")
    given = sources(tmp_path, 5, burned=(1, 3))
    prepared = transformed.prepare_files(RESEARCH, SECRET, given, label="send", ahead=True)
    answered = []
    target = dicom_send.Target("RESEARCH", "127.0.0.1", port, "ROUTER")

    results = dicom_send.send(target, prepared.files, on_sent=lambda i, r: answered.append((i, r.kind)))
    results = prepared.finish(results)

    assert answered == [(0, "delivered"), (1, "skipped"), (2, "delivered"), (3, "skipped"), (4, "delivered")]
    assert [r.kind for r in results] == ["delivered"] * 3 and len(prepared.files) == len(prepared.sha256) == 3
    assert sorted(prepared.held) == ["item-2", "item-4"]
    received = sorted(str(dcmread(p).SOPInstanceUID) for p in folder.iterdir())
    assert received == sorted(prepared.sent_uids)  # what the ledger records is what the destination holds
    transformed.clean(prepared)


def test_a_helper_killed_half_way_leaves_the_rest_to_the_delivering_process(storage, tmp_path):
    given = sources(tmp_path, 8)
    here = transformed.prepare_files(SITE, SECRET, given, label="here")
    there = transformed.prepare_files(SITE, SECRET, given, label="there", ahead=True)
    assert there.files[1].ready()
    os.kill(ahead._helper.process.pid, signal.SIGKILL)

    assert all(f.ready() for f in there.files[2:])
    there.finish()

    assert made(there) == made(here)
    assert ahead._helper.process is None  # the dead one was reaped; the next job starts another
    job = ahead.start([(given[0].path, tmp_path / "again.dcm")], SITE, SECRET)
    assert job is not None and job.next()[0] == "made" and ahead._helper.process.poll() is None
    transformed.clean(here)
    transformed.clean(there)
