"""Studies held for the QIDO-RS and WADO-RS tests, put in place as the SCP and the pipeline's persist step do,
and purged with the storage lifecycle's own primitives."""

import hashlib
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from apps.studies.models import Instance, PurgeReason, Study
from apps.studies.services import instance_files_remove, instances_purge_mark

from ..support.pipeline import receive_study, run_steps


def hold(storage: Path, paths: list[Path]) -> Study:
    study_id = receive_study(storage, paths)
    run_steps(study_id, until="persist")
    return Study.objects.get(pk=study_id)


def purge(instances) -> None:
    ids = [i.pk for i in instances]
    instances_purge_mark(instance_ids=ids, reason=PurgeReason.DELETED, now=timezone.now())
    instance_files_remove(instance_ids=ids)


def stored_sha256(instance: Instance) -> str:
    """The SHA-256 of the file the router keeps for the instance, read from disk now."""
    return hashlib.sha256((Path(settings.STORAGE_ROOT) / instance.path).read_bytes()).hexdigest()
