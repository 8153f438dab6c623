from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from apps.ops import views as ops_views
from apps.pipeline import views as pipeline_views
from apps.reading import views as reading_views

urlpatterns = [
    path("admin/studies/<int:study_id>/timeline/", pipeline_views.study_timeline, name="study-timeline"),
    path("admin/", admin.site.urls),
    path("dashboard/", pipeline_views.dashboard, name="dashboard"),
    path("healthz", ops_views.healthz, name="healthz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("api/v1/", include("apps.api.urls")),
    path("dicomweb/", include("apps.dicomweb.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("worklist/", reading_views.worklist, name="worklist"),
    path("worklist/<int:assignment_id>/<str:name>/", reading_views.transition, name="worklist-transition"),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
