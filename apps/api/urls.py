from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from . import auth, views

router = DefaultRouter()
router.register("assignments", views.AssignmentViewSet, basename="assignment")
router.register("studies", views.StudyViewSet, basename="study")
router.register("deliveries", views.DeliveryViewSet, basename="delivery")
router.register("radiologists", views.RadiologistViewSet, basename="radiologist")
router.register("audit-events", views.AuditEventViewSet, basename="audit-event")

urlpatterns = [
    path("", include(router.urls)),
    path("auth/login/", auth.LoginView.as_view(), name="api-login"),
    path("auth/logout/", auth.LogoutView.as_view(), name="api-logout"),
    path("auth/logoutall/", auth.LogoutAllView.as_view(), name="api-logoutall"),
    path("reports/routing/", views.RoutingReportView.as_view(), name="routing-report"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]
