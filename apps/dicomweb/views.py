"""DICOMweb (PS3.18): STOW-RS stores, QIDO-RS searches, WADO-RS retrieves, on the same resources.

STOW-RS (10.5): POST /dicomweb/studies[/{StudyInstanceUID}], multipart/related; type="application/dicom".
The view checks what can be checked before the body is read (token and role, media type, length), hands
the body to the service unread, and answers what became of each instance: 200 all stored, 202 some, 409
none (with each failure's reason), 400 a body that is not multipart/related (or holds no instance), 413 a
body over STOW_MAX_BYTES. Errors found before the body is read answer in the API's error shape, as JSON.

QIDO-RS (10.6) and WADO-RS (10.4): GET on the study, series and instance resources (docs/dicomweb-query.md).
Searches run archive's query engine, the one behind C-FIND; retrieves send the stored files as they are.
Errors answer in the API's error shape too: 400 a parameter the router cannot honour, 404 nothing held,
406 an Accept the router cannot serve (it never transcodes).
"""

import json

from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from knox.auth import TokenAuthentication
from rest_framework import exceptions, status
from rest_framework.exceptions import APIException, ParseError, UnsupportedMediaType
from rest_framework.permissions import SAFE_METHODS
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.archive import query as q
from apps.archive.services import find
from apps.audit.services import client_address
from apps.ingest.inspect import UID_PATTERN
from apps.ingest.services import Origin
from apps.ingest.storage import Spool
from apps.pipeline.chains import studies_received

from . import multipart, qido, services, wado
from .permissions import ReadsInstances, SendsInstances

MULTIPART_RELATED = "multipart/related"
# The calling AE title a C-STORE would carry: the sending account's username, cut to an AE title's length.
AE_TITLE_LENGTH = 16


class DicomJsonRenderer(JSONRenderer):
    media_type = "application/dicom+json"
    format = "dicomjson"


class LengthRequired(APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_code = "length_required"
    default_detail = "Send the body with a Content-Length, or with chunked transfer encoding."


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"


@extend_schema(exclude=True)  # DICOMweb, described by PS3.18, not part of the /api/v1/ schema
class DicomwebView(APIView):
    """A DICOMweb resource: POST stores (the sender role), GET searches or retrieves (the reader role, staff)."""

    authentication_classes = [TokenAuthentication]
    renderer_classes = [DicomJsonRenderer, JSONRenderer]
    parser_classes: list = []  # the STOW service reads the body as it arrives

    def get_permissions(self):
        return [SendsInstances() if self.request.method == "POST" else ReadsInstances()]

    def perform_content_negotiation(self, request, force=False):
        if request.method in SAFE_METHODS:
            # PS3.18's media types carry parameters DRF does not weigh (type, transfer-syntax): the readers
            # check Accept themselves (wado.py) and answer with Django responses; errors answer JSON.
            return (JSONRenderer(), JSONRenderer.media_type)
        return super().perform_content_negotiation(request, force)

    def handle_exception(self, exc):
        if isinstance(exc, q.QueryError):
            exc = ParseError(str(exc))
        elif isinstance(exc, wado.NotFound):
            exc = exceptions.NotFound(str(exc))
        elif isinstance(exc, wado.NotAcceptable):
            exc = exceptions.NotAcceptable(str(exc))
        # The API's error shape is not DICOM JSON: say it is JSON, whatever the client asked for.
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)

    # -- QIDO-RS ---------------------------------------------------------------------------------------

    def search(self, request, level: str, *, study: str | None = None, series: str | None = None) -> HttpResponse:
        wado.json_accepted(request.META.get("HTTP_ACCEPT", ""))
        params = [(name, value) for name, values in request.GET.lists() for value in values]
        search = qido.search_parse(level=level, params=params, study=study, series=series)
        results = find(
            query=search.query,
            caller=request.user.get_username(),
            source=client_address(request) or "",
            face="dicomweb",
            limit=search.limit,
            offset=search.offset,
        )
        base = request.build_absolute_uri(reverse("dicomweb-studies"))
        fields = search.fields()
        body = [qido.match_json(row, fields, retrieve_url=_retrieve_url(base, level, row)) for row in results.rows]
        # No match is 200 with an empty array (CP-2473 corrects PS3.18's 204; dicomweb-client reads both).
        response = HttpResponse(json.dumps(body, ensure_ascii=False), content_type=wado.DICOM_JSON)
        warnings = []
        if results.more:
            warnings.append("There are additional results that can be requested (offset).")
        if search.fuzzy:
            warnings.append("The fuzzymatching parameter is not supported. Only literal matching has been performed.")
        _warn(request, response, warnings)
        return response

    # -- WADO-RS ---------------------------------------------------------------------------------------

    def retrieve(self, request, target: wado.Target) -> StreamingHttpResponse:
        accepted = wado.syntaxes_accepted(request.META.get("HTTP_ACCEPT", ""))
        held = wado.instances_held(target)
        wado.syntaxes_check(held.instances, accepted)
        wado.reads_audit(held, target=target, **_caller(request), action="retrieve")
        boundary = wado.boundary_make()
        response = StreamingHttpResponse(
            wado.multipart_files(held.instances, boundary),
            content_type=f'multipart/related; type="{wado.DICOM}"; boundary={boundary}',
        )
        _warn(request, response, _purged(held))
        return response

    def metadata(self, request, target: wado.Target) -> StreamingHttpResponse:
        wado.json_accepted(request.META.get("HTTP_ACCEPT", ""))
        held = wado.instances_held(target)
        wado.reads_audit(held, target=target, **_caller(request), action="metadata")
        response = StreamingHttpResponse(wado.metadata_json(held.instances), content_type=wado.DICOM_JSON)
        _warn(request, response, _purged(held))
        return response


def _caller(request) -> dict:
    return {"caller": request.user.get_username(), "source": client_address(request) or ""}


def _retrieve_url(base: str, level: str, row: dict) -> str:
    url = f"{base}/{row['StudyInstanceUID']}"
    if level in (q.SERIES, q.IMAGE):
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == q.IMAGE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def _purged(held: "wado.Held") -> list[str]:
    if not held.purged:
        return []
    return [f"{held.purged} instances named by this request were purged and are not included."]


def _warn(request, response, texts: list[str]) -> None:
    """RFC 7234 Warning headers, as PS3.18 8.3.4 and 10.4 use them (code 299, the server as agent)."""
    if texts:
        response["Warning"] = ", ".join(f'299 {request.get_host()} "{text}"' for text in texts)


class StoreInstancesView(DicomwebView):
    def post(self, request, study_instance_uid: str | None = None) -> Response:
        if study_instance_uid is not None and not _is_uid(study_instance_uid):
            raise ParseError("The URL's Study Instance UID is not a valid UID.")
        boundary = _boundary(request)
        receipt = services.instances_receive(
            stream=_body(request),
            boundary=boundary,
            max_bytes=settings.STOW_MAX_BYTES,
            spool=Spool(settings.STORAGE_ROOT),
            origin=Origin(
                calling_ae_title=request.user.get_username()[:AE_TITLE_LENGTH],
                called_ae_title=settings.SCP_AE_TITLE,
                peer_address=client_address(request) or "",
            ),
            study_instance_uid=study_instance_uid,
            on_studies_received=studies_received,
        )
        return Response(store_response(receipt), status=http_status(receipt))


class StudiesView(StoreInstancesView):
    """/studies: search for studies (QIDO-RS), store instances (STOW-RS)."""

    def get(self, request) -> HttpResponse:
        return self.search(request, q.STUDY)


class StudyView(StoreInstancesView):
    """/studies/{study}: retrieve the study (WADO-RS), store instances of it (STOW-RS)."""

    def get(self, request, study_instance_uid: str) -> StreamingHttpResponse:
        return self.retrieve(request, wado.Target(q.STUDY, study_instance_uid))


class SeriesSearchView(DicomwebView):
    """/series and /studies/{study}/series: search for series."""

    def get(self, request, study_instance_uid: str | None = None) -> HttpResponse:
        return self.search(request, q.SERIES, study=study_instance_uid)


class InstancesSearchView(DicomwebView):
    """/instances, /studies/{study}/instances and /studies/{study}/series/{series}/instances: search."""

    def get(self, request, study_instance_uid: str | None = None, series_instance_uid: str | None = None):
        return self.search(request, q.IMAGE, study=study_instance_uid, series=series_instance_uid)


class SeriesView(DicomwebView):
    def get(self, request, study_instance_uid: str, series_instance_uid: str) -> StreamingHttpResponse:
        return self.retrieve(request, wado.Target(q.SERIES, study_instance_uid, series_instance_uid))


class InstanceView(DicomwebView):
    def get(self, request, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str):
        target = wado.Target(q.IMAGE, study_instance_uid, series_instance_uid, sop_instance_uid)
        return self.retrieve(request, target)


class MetadataView(DicomwebView):
    """/metadata of a study, a series or an instance."""

    def get(self, request, study_instance_uid: str, series_instance_uid=None, sop_instance_uid=None):
        level = q.IMAGE if sop_instance_uid else q.SERIES if series_instance_uid else q.STUDY
        target = wado.Target(level, study_instance_uid, series_instance_uid, sop_instance_uid)
        return self.metadata(request, target)


def _is_uid(value: str) -> bool:
    return len(value) <= 64 and UID_PATTERN.fullmatch(value) is not None


def _boundary(request) -> str:
    django_request = request._request  # DRF's content_type is the raw header; Django's is parsed
    content_type = request.META.get("CONTENT_TYPE", "")
    if django_request.content_type.lower() != MULTIPART_RELATED:
        raise UnsupportedMediaType(content_type or "none")
    params = {key.lower(): value for key, value in django_request.content_params.items()}
    # RFC 2387: a part without a Content-Type has the body's "type"; no "type" is taken as DICOM.
    if params.get("type", services.DICOM_PART_TYPE).lower() != services.DICOM_PART_TYPE:
        raise UnsupportedMediaType(content_type, detail='Only multipart/related; type="application/dicom" is stored.')
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70:  # RFC 2046: 1 to 70 characters
        raise ParseError("The Content-Type has no valid boundary.")
    return boundary


def _body(request):
    """The request body as a stream, checked against STOW_MAX_BYTES before a byte is read when its length
    is declared. A chunked body (dicomweb-client sends one above 1 MB) has no length: its stream is the
    server's, which ends at the last chunk (gunicorn says so with wsgi.input_terminated), and the service
    counts it as it reads."""
    meta = request.META
    declared = meta.get("CONTENT_LENGTH", "")
    if declared:
        try:
            length = int(declared)
        except ValueError:
            raise ParseError("The Content-Length is not a number.") from None
        if length > settings.STOW_MAX_BYTES:
            raise PayloadTooLarge(f"The body is larger than {settings.STOW_MAX_BYTES} bytes.")
        return request._request  # Django's request reads its body up to the declared length
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower() and meta.get("wsgi.input_terminated"):
        return meta["wsgi.input"]
    raise LengthRequired()


def http_status(receipt: services.Receipt) -> int:
    """PS3.18 Table 10.5.3-1, with one rule of ours: once an instance is stored, the answer says so (200 or
    202 and the truth per instance in the body), whatever went wrong after it."""
    if receipt.stored:
        return status.HTTP_202_ACCEPTED if receipt.failed or receipt.body_error else status.HTTP_200_OK
    if isinstance(receipt.body_error, multipart.TooLarge):
        return status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    if receipt.body_error is not None or not receipt.failed:
        return status.HTTP_400_BAD_REQUEST
    return status.HTTP_409_CONFLICT


def store_response(receipt: services.Receipt) -> dict:
    """The Store Instances Response Module (PS3.18 Annex I) in DICOM JSON. Retrieve URL is present and
    empty, as its type 2 allows (the WADO-RS URLs of what was stored are not filled in yet)."""
    body: dict = {"00081190": {"vr": "UR"}}
    if receipt.failed:
        items = [{**_reference(r), "00081197": {"vr": "US", "Value": [r.status]}} for r in receipt.failed]
        body["00081198"] = {"vr": "SQ", "Value": items}
    if receipt.stored:
        items = [{**_reference(r), "00081190": {"vr": "UR"}} for r in receipt.stored]
        body["00081199"] = {"vr": "SQ", "Value": items}
    return body


def _reference(result: services.InstanceResult) -> dict:
    # A part that never said which instance it held (not DICOM) is reported with empty UIDs.
    return {
        "00081150": _ui(result.sop_class_uid),
        "00081155": _ui(result.sop_instance_uid),
    }


def _ui(value: str) -> dict:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}
