"""Links from a study to the image viewer beside a destination (an OHIF, Orthanc Explorer or PACS viewer URL):
the destination's `viewer_url_template`, with `{StudyInstanceUID}` and `{AccessionNumber}` filled in.

Only those two placeholders exist (no patient data ever goes into a URL that browsers, proxies and access
logs keep), and the template is plain substitution: never `str.format`, whose attribute and index syntax
would reach into the values."""

import re
from urllib.parse import quote, urlsplit

PLACEHOLDERS = ("StudyInstanceUID", "AccessionNumber")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def viewer_template_errors(template: str) -> list[str]:
    """What is wrong with a viewer URL template; empty when it may be saved (an empty template is no link)."""
    if not template:
        return []
    errors = []
    parts = urlsplit(template.replace("{", "").replace("}", ""))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        errors.append("must start with http:// or https:// and a host")
    elif "{" in urlsplit(template).netloc:
        errors.append("may not put a placeholder in the host (a study would choose where the browser goes)")
    names = PLACEHOLDER.findall(template)
    unknown = sorted({n for n in names if n not in PLACEHOLDERS})
    if unknown:
        errors.append(
            f"has unknown placeholder(s) {', '.join('{' + n + '}' for n in unknown)}; "
            "use {StudyInstanceUID} or {AccessionNumber}"
        )
    if not any(n in PLACEHOLDERS for n in names):
        errors.append("needs {StudyInstanceUID} or {AccessionNumber}, or every study opens the same page")
    if PLACEHOLDER.sub("", template).count("{") or PLACEHOLDER.sub("", template).count("}"):
        errors.append("has an unbalanced brace")
    return errors


def viewer_url_render(template: str, *, study_instance_uid: str, accession_number: str) -> str | None:
    """The template with its placeholders filled, each value percent-encoded; None when the template is
    empty, or it needs an accession number the study does not have."""
    if not template or ("{AccessionNumber}" in template and not accession_number):
        return None
    values = {"StudyInstanceUID": study_instance_uid, "AccessionNumber": accession_number}
    return PLACEHOLDER.sub(lambda m: quote(values.get(m.group(1), ""), safe=""), template)


def viewer_links(*, study_ids: list[int]) -> dict[int, str]:
    """For each study, the viewer link of the first destination (by delivery time) that has it and has a
    viewer template; studies with none are left out. One query."""
    from .models import Delivery

    links: dict[int, str] = {}
    deliveries = (
        Delivery.objects.filter(study_id__in=study_ids, state=Delivery.State.DELIVERED)
        .exclude(destination__viewer_url_template="")
        .order_by("delivered_at", "id")
        .values_list(
            "study_id", "destination__viewer_url_template", "study__study_instance_uid", "study__accession_number"
        )
    )
    for study_id, template, uid, accession in deliveries:
        if study_id not in links:
            url = viewer_url_render(template, study_instance_uid=uid, accession_number=accession)
            if url:
                links[study_id] = url
    return links
