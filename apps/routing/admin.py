from django.contrib import admin, messages

from .models import Delivery, DeliveryItem, Destination, RoutingDecision, RoutingRule, RuleCriterion
from .services import delivery_retry, destination_echo


@admin.register(Destination)
class DestinationAdmin(admin.ModelAdmin):
    list_display = ("name", "ae_title", "host", "port", "enabled", "max_attempts")
    list_filter = ("enabled",)
    search_fields = ("name", "ae_title", "host")
    actions = ["test_connection"]

    @admin.action(description="Test connection (C-ECHO)")
    def test_connection(self, request, queryset) -> None:
        for destination in queryset:
            result = destination_echo(destination_id=destination.pk)
            level = messages.SUCCESS if result.kind == "delivered" else messages.ERROR
            self.message_user(request, f"{destination.name}: {result.kind} {result.error}".strip(), level)


class RuleCriterionInline(admin.TabularInline):
    model = RuleCriterion
    extra = 1


@admin.register(RoutingRule)
class RoutingRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "priority", "enabled", "exclusive", "fallback")
    list_filter = ("enabled", "exclusive", "fallback")
    search_fields = ("name",)
    filter_horizontal = ("destinations",)
    inlines = [RuleCriterionInline]


@admin.register(RoutingDecision)
class RoutingDecisionAdmin(admin.ModelAdmin):
    list_display = ("study", "destinations", "matched_rules", "unrouted", "decided_at")
    list_filter = ("unrouted",)
    readonly_fields = ("study", "matched_rules", "destinations", "explanation", "unrouted", "decided_at")


class DeliveryItemInline(admin.TabularInline):
    model = DeliveryItem
    extra = 0
    can_delete = False
    fields = ("instance", "state", "status", "attempts", "error", "updated_at")
    readonly_fields = fields


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "study", "destination", "state", "attempts", "next_attempt_at", "delivered_at", "last_error")
    list_filter = ("state", "destination")
    readonly_fields = [f.name for f in Delivery._meta.fields]
    inlines = [DeliveryItemInline]
    actions = ["retry"]

    @admin.action(description="Retry failed deliveries (sends only what is missing)")
    def retry(self, request, queryset) -> None:
        count = sum(delivery_retry(delivery_id=d.pk) for d in queryset)
        self.message_user(request, f"{count} deliveries queued again.")
