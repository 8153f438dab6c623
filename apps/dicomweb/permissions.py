"""Who may use DICOMweb: the accounts of the sender role store (STOW-RS), the accounts of the reader role and
staff search and retrieve (QIDO-RS, WADO-RS). Neither role implies the other."""

from rest_framework.permissions import BasePermission

from apps.api.permissions import in_group

# Created by this app's migrations; an account in one may do that, and nothing else follows from it.
STOW_SENDERS_GROUP = "stow-senders"
READERS_GROUP = "dicomweb-readers"


class SendsInstances(BasePermission):
    message = f"Only members of the {STOW_SENDERS_GROUP} group may store instances."

    def has_permission(self, request, view) -> bool:
        return in_group(request.user, STOW_SENDERS_GROUP)


class ReadsInstances(BasePermission):
    message = f"Only members of the {READERS_GROUP} group and staff may search and retrieve instances."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return user.is_authenticated and (user.is_staff or in_group(user, READERS_GROUP))
