"""Who may send instances by STOW-RS: the accounts of the sender role, one per sending system."""

from rest_framework.permissions import BasePermission

from apps.api.permissions import in_group

# Created by this app's migration; an account in it may store instances, and nothing else follows from it.
STOW_SENDERS_GROUP = "stow-senders"


class SendsInstances(BasePermission):
    message = f"Only members of the {STOW_SENDERS_GROUP} group may store instances."

    def has_permission(self, request, view) -> bool:
        return in_group(request.user, STOW_SENDERS_GROUP)
