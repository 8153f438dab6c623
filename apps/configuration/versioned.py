"""The admin side of configuration versions: a ModelAdmin of a configuration model records a version after
each change saved through it (apps.configuration.versions)."""

from . import versions


class VersionedAdmin:
    """Mixin for the ModelAdmin of a configuration model. Before a POST, the configuration as it is becomes
    a version if no version holds it yet (so the change can be rolled back to it); every add, change or
    delete the admin logs records the version after it, with the user, once the transaction commits."""

    def changeform_view(self, request, *args, **kwargs):
        if request.method == "POST":
            versions.baseline_ensure()
        return super().changeform_view(request, *args, **kwargs)

    def delete_view(self, request, *args, **kwargs):
        if request.method == "POST":
            versions.baseline_ensure()
        return super().delete_view(request, *args, **kwargs)

    def changelist_view(self, request, *args, **kwargs):
        if request.method != "POST":
            return super().changelist_view(request, *args, **kwargs)
        versions.baseline_ensure()
        response = super().changelist_view(request, *args, **kwargs)
        # Actions run outside a transaction, and "delete selected" logs before it deletes: the version is
        # taken after the whole request (none if the action changed no configuration, as "test connection").
        versions.version_record(user=request.user, source=versions.ConfigVersion.Source.ADMIN)
        return response

    def log_addition(self, request, obj, message):
        versions.changed(user=request.user)
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        versions.changed(user=request.user)
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        versions.changed(user=request.user)
        return super().log_deletions(request, queryset)
