"""System checks for the routing app: the private parts of pynetdicom our sender patches."""

from django.core.checks import Error, register

from . import dicom_send

_PATCHED = ", ".join(dicom_send.PATCHED)


@register()
def check_reactor_patch(app_configs, **kwargs) -> list[Error]:
    """The sender's cure for pynetdicom's lost C-STORE responses fits only the version it was written for:
    without it every delivery may stall for its DIMSE timeout, with a misfit it may break the sender."""
    return [
        Error(
            f"apps.routing.dicom_send's reactor patch does not fit the installed pynetdicom: {problem}.",
            hint=f"Check the patch against pynetdicom's association reactor, then update {_PATCHED} "
            "and PYNETDICOM_VERSION in apps/routing/dicom_send.py.",
            id="routing.E001",
        )
        for problem in dicom_send.patch_problems()
    ]
