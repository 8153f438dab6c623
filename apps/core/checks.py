"""System checks for what must hold before any process starts."""

import os

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_ae_title(app_configs, **kwargs) -> list[Error]:
    title = settings.SCP_AE_TITLE
    if not title or len(title) > 16 or "\\" in title or not title.isascii():
        return [Error(f"SCP_AE_TITLE {title!r} is not a valid AE title (1-16 ASCII characters).", id="core.E001")]
    return []


@register()
def check_storage_writable(app_configs, **kwargs) -> list[Error]:
    root = settings.STORAGE_ROOT
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [Error(f"STORAGE_ROOT {root} cannot be created: {exc}", id="core.E002")]
    if not os.access(root, os.W_OK):
        return [Error(f"STORAGE_ROOT {root} is not writable.", id="core.E003")]
    return []


@register()
def check_visibility_timeout(app_configs, **kwargs) -> list[Error]:
    """Redis redelivers any message older than the visibility timeout: no wait may come near it."""
    longest = max(settings.CELERY_TASK_TIME_LIMIT, settings.RECONCILE_AFTER)
    if longest >= settings.CELERY_VISIBILITY_TIMEOUT:
        return [
            Error(
                f"CELERY_VISIBILITY_TIMEOUT ({settings.CELERY_VISIBILITY_TIMEOUT}s) must exceed the task time "
                f"limit and the reconcile age ({longest}s), or Redis will deliver running tasks twice.",
                id="core.E004",
            )
        ]
    return []


@register()
def check_embedded_default(app_configs, **kwargs) -> list[Warning]:
    """Say loudly when the router runs on the embedded default: convenient, not for production."""
    if settings.PRODUCTION:
        return []
    return [
        Warning(
            "Running on the embedded default (no PRODUCTION=true): development secret key and settings. "
            "Not for production; see docs/deployment.md.",
            id="core.W001",
        )
    ]


@register()
def check_patched_internals(app_configs, **kwargs) -> list[Error]:
    """Every private part of a library we patch exists, in the version the patch was written for."""
    from .internals import PATCHES, patch_problems

    return [
        Error(
            f"{patch.where} patches private parts of {patch.package} that do not fit the installed one: {problem}.",
            hint=f"Read {patch.where} against the new {patch.package}, then update apps/core/internals.py.",
            id="core.E005",
        )
        for patch in PATCHES
        for problem in patch_problems(patch)
    ]
