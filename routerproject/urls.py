from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from apps.ops import views as ops_views
from apps.pipeline import views as pipeline_views
from apps.reading import views as reading_views
from apps.routing.viewer import viewer_links

# The worklist opens studies in the viewer of the destination they went to: routing's answer, handed to
# reading's views here (neither domain app imports the other).
VIEWER = {"viewer_links": viewer_links}

urlpatterns = [
    path("admin/studies/<int:study_id>/timeline/", pipeline_views.study_timeline, name="study-timeline"),
    path("admin/", admin.site.urls),
    path("dashboard/", pipeline_views.dashboard, name="dashboard"),
    path("healthz", ops_views.healthz, name="healthz"),
    path("metrics", ops_views.metrics, name="metrics"),
    path("api/v1/", include("apps.api.urls")),
    path("dicomweb/", include("apps.dicomweb.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("worklist/", reading_views.worklist, VIEWER, name="worklist"),
    path("worklist/rows/", reading_views.rows, VIEWER, name="worklist-rows"),
    path("worklist/events/", reading_views.events, VIEWER, name="worklist-events"),
    path("worklist/filters/", reading_views.filters, VIEWER, name="worklist-filters"),
    path("worklist/preferences/", reading_views.preferences, name="worklist-preferences"),
    path("worklist/<int:assignment_id>/open/", reading_views.open_in_viewer, VIEWER, name="worklist-open"),
    path("worklist/<int:assignment_id>/<str:name>/", reading_views.transition, VIEWER, name="worklist-transition"),
    path("board/", reading_views.board, name="board"),
    path("board/events/", reading_views.events, {"scope": "board"}, name="board-events"),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
