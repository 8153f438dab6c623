"""The private parts of libraries we patch or override, and the versions the patches were written for.

An upgrade that renames one of them would silently disable what the patch does (the SCP's PDU limits
against hostile peers, its wakeups, the sender's cure for lost responses, Beat's restart over a cut-short
schedule file, the embedded broker's atomic writes, the transform engine's splice of unchanged elements, the
query/retrieve service's own C-MOVE and C-GET): a system check (core.E005) refuses to start any process
when a version differs or a part is missing. Each
entry names a part as `module:Class.attribute`; an attribute that exists only on instances is named by the
source text that assigns it (`source:`).
Names only: this module imports each library when the check runs, never at import.
"""

import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Patch:
    where: str  # our module that relies on the parts
    package: str  # the distribution, for its version
    version: str
    parts: tuple[str, ...]


PATCHES = (
    Patch(
        "apps.ingest.guard",
        "pynetdicom",
        "3.0.4",
        (
            "pynetdicom.dul:DULServiceProvider._read_pdu_data",
            "pynetdicom.dul:DULServiceProvider._decode_pdu",
            "pynetdicom.dul:DULServiceProvider.__init__ source:self.socket",
        ),
    ),
    Patch(
        "apps.ingest.reactor",
        "pynetdicom",
        "3.0.4",
        (
            "pynetdicom.dul:DULServiceProvider._is_transport_event",
            "pynetdicom.dul:DULServiceProvider.__init__ source:self._run_loop_delay",
            "pynetdicom.dul:DULServiceProvider.__init__ source:self.to_provider_queue",
            "pynetdicom.dul:DULServiceProvider.__init__ source:self.to_user_queue",
            "pynetdicom.dul:DULServiceProvider.run_reactor source:self._run_loop_delay",
            "pynetdicom.dimse:DIMSEServiceProvider.__init__ source:self.msg_queue",
            "pynetdicom.dimse:DIMSEServiceProvider.dimse_timeout",
            "pynetdicom.dimse:DIMSEServiceProvider.get_msg",
        ),
    ),
    Patch(
        "apps.routing.dicom_send",
        "pynetdicom",
        "3.0.4",
        (
            "pynetdicom.association:Association._run_reactor source:self.dimse.get_msg(block=False)",
            "pynetdicom.association:Association.__init__ source:self.dimse",
            "pynetdicom.dimse:DIMSEServiceProvider.get_msg",
        ),
    ),
    Patch(
        "apps.ingest.scp",
        "pynetdicom",
        "3.0.4",
        (
            "pynetdicom.transport:RequestHandler._create_association source:deepcopy(self.server.contexts)",
            "pynetdicom.presentation:negotiate_as_acceptor",
        ),
    ),
    Patch(
        "apps.archive.dimse",
        "pynetdicom",
        "3.0.4",
        (
            "pynetdicom.association:uid_to_service_class",
            "pynetdicom.association:Association._serve_request source:uid_to_service_class(class_uid)(self)",
            "pynetdicom.service_class:QueryRetrieveServiceClass.SCP source:self._move_scp(req, context)",
            "pynetdicom.service_class:QueryRetrieveServiceClass.SCP source:self._get_scp(req, context)",
            "pynetdicom.service_class:ServiceClass.is_cancelled source:self.dimse.cancel_req",
            "pynetdicom.service_class:ServiceClass.dimse",
            "pynetdicom.service_class:ServiceClass._c_find_scp source:if status[0] == STATUS_WARNING:",
            "pynetdicom.dimse:DIMSEServiceProvider.send_msg",
            "pynetdicom.dul:DULServiceProvider.__init__ source:self.to_provider_queue",
            "pynetdicom.service_class:ServiceClass.__init__ source:self.assoc = assoc",
        ),
    ),
    Patch(
        "apps.transforms.splice",
        "pydicom",
        "3.0.2",
        ("pydicom.filereader:_read_file_meta_info", "pydicom.dataset:Dataset._character_set"),
    ),
    Patch(
        "apps.transforms.engine",
        "pydicom",
        "3.0.2",
        ("pydicom.dataset:Dataset._character_set",),
    ),
    Patch(
        "routerproject.beat",
        "celery",
        "5.6.3",
        (
            "celery.beat:PersistentScheduler._create_schedule",
            "celery.beat:PersistentScheduler._destroy_open_corrupted_schedule",
            "celery.beat:PersistentScheduler.setup_schedule source:self._store",
        ),
    ),
    Patch(
        "routerproject.broker",
        "kombu",
        "5.7.0",
        ("kombu.transport.filesystem:Channel._put", "kombu.transport.filesystem:Channel.data_folder_out"),
    ),
)


def patch_of(where: str) -> Patch:
    return next(p for p in PATCHES if p.where == where)


def part_problem(part: str) -> str | None:
    """Why `part` is not there, or None when it is."""
    name, _, text = part.partition(" source:")
    module_name, _, path = name.partition(":")
    try:
        target = importlib.import_module(module_name)
        for attribute in path.split("."):
            target = getattr(target, attribute)
    except (ImportError, AttributeError):
        return f"{name} is missing"
    if text:
        try:
            source = inspect.getsource(target)
        except (OSError, TypeError):
            return f"the source of {name} cannot be read to find {text}"
        if text not in source:
            return f"{name} no longer has {text}"
    return None


def patch_problems(patch: Patch) -> list[str]:
    try:
        installed = metadata.version(patch.package)
    except metadata.PackageNotFoundError:
        return [f"{patch.package} is not installed"]
    problems = [part_problem(part) for part in patch.parts]
    if installed != patch.version:
        problems.append(f"{patch.package} is {installed}, written for {patch.version}")
    return [p for p in problems if p]
