from django.urls import path

from . import views

STUDY = "studies/<str:study_instance_uid>"
SERIES = f"{STUDY}/series/<str:series_instance_uid>"
INSTANCE = f"{SERIES}/instances/<str:sop_instance_uid>"

# PS3.18: POST stores (10.5, the Studies Store Transaction); GET searches (10.6) and retrieves (10.4).
urlpatterns = [
    path("studies", views.StudiesView.as_view(), name="dicomweb-studies"),
    path(STUDY, views.StudyView.as_view(), name="dicomweb-study"),
    path(f"{STUDY}/metadata", views.MetadataView.as_view(), name="dicomweb-study-metadata"),
    path(f"{STUDY}/series", views.SeriesSearchView.as_view(), name="dicomweb-study-series"),
    path(f"{STUDY}/instances", views.InstancesSearchView.as_view(), name="dicomweb-study-instances"),
    path(SERIES, views.SeriesView.as_view(), name="dicomweb-series"),
    path(f"{SERIES}/metadata", views.MetadataView.as_view(), name="dicomweb-series-metadata"),
    path(f"{SERIES}/instances", views.InstancesSearchView.as_view(), name="dicomweb-series-instances"),
    path(INSTANCE, views.InstanceView.as_view(), name="dicomweb-instance"),
    path(f"{INSTANCE}/metadata", views.MetadataView.as_view(), name="dicomweb-instance-metadata"),
    path("series", views.SeriesSearchView.as_view(), name="dicomweb-all-series"),
    path("instances", views.InstancesSearchView.as_view(), name="dicomweb-all-instances"),
]
