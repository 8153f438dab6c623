from django.contrib import admin

from .models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("id", "event", "subject_key", "recipient", "channel", "state", "attempts", "created_at")
    list_filter = ("state", "channel", "event")
    search_fields = ("subject_key", "recipient__username")
    readonly_fields = [f.name for f in Notification._meta.fields]
