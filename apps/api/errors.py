"""Every API error in one shape: {"error": {"code", "message", "details"}}."""

from rest_framework.exceptions import APIException
from rest_framework.views import exception_handler


def handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django's 500 handling, never details to the client
    data = response.data
    message = data.get("detail") if isinstance(data, dict) and "detail" in data else "invalid request"
    code = getattr(exc, "default_code", "error")
    details = None if isinstance(data, dict) and set(data) == {"detail"} else data
    response.data = {"error": {"code": code, "message": str(message), "details": details}}
    return response


class Conflict(APIException):
    status_code = 409
    default_code = "conflict"
    default_detail = "Not possible in the current state."
