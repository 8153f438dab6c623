"""Who may see what. Radiologists see their own assignments; supervisors and integration clients see
everything (integration read-only); staff administer. Lists are filtered in the views' querysets:
object permissions alone would not filter them."""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from apps.reading.defaults import SUPERVISORS_GROUP

INTEGRATION_GROUP = "integration"
AUDITORS_GROUP = "auditors"


def in_group(user, name: str) -> bool:
    return user.is_authenticated and user.groups.filter(name=name).exists()


def sees_everything(user) -> bool:
    return user.is_staff or in_group(user, SUPERVISORS_GROUP) or in_group(user, INTEGRATION_GROUP)


def supervises(user) -> bool:
    return user.is_staff or in_group(user, SUPERVISORS_GROUP)


def radiologist_of(user):
    return getattr(user, "radiologist", None) if user.is_authenticated else None


class HasRole(BasePermission):
    """Any of the roles; a user with none gets 403 everywhere."""

    message = "Your account has no role in the router."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not user.is_authenticated:
            return False
        if in_group(user, INTEGRATION_GROUP) and not (user.is_staff or in_group(user, SUPERVISORS_GROUP)):
            return request.method in SAFE_METHODS
        return sees_everything(user) or radiologist_of(user) is not None


class Supervises(BasePermission):
    message = "Only supervisors and staff may do this."

    def has_permission(self, request, view) -> bool:
        return supervises(request.user)


class SeesEverything(BasePermission):
    message = "Only supervisors, integration clients and staff may see this."

    def has_permission(self, request, view) -> bool:
        return sees_everything(request.user) and (request.method in SAFE_METHODS or supervises(request.user))


class Audits(BasePermission):
    message = "Only auditors and staff read the audit trail."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return request.method in SAFE_METHODS and (user.is_staff or in_group(user, AUDITORS_GROUP))
