from django.contrib import admin

from apps.configuration.versioned import VersionedAdmin

from .models import Notification, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(VersionedAdmin, admin.ModelAdmin):
    list_display = ("name", "url", "events", "enabled", "phi_approved")
    list_filter = ("enabled", "phi_approved")


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "event", "subject_key", "recipient", "channel", "state", "attempts", "created_at")
    list_filter = ("state", "channel", "event")
    search_fields = ("subject_key", "recipient__username")
    readonly_fields = [f.name for f in Notification._meta.fields]
