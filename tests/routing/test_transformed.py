"""A delivery through a transform profile: what the engine refuses or cannot do holds that instance for that
destination, never the delivery or the study's other instances."""

import pytest

from apps.routing import transformed
from apps.routing.models import Delivery, DeliveryItem, Destination
from apps.transforms.models import TransformProfile

from ..support.dicom import synthetic_study
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db


def test_a_file_the_engine_cannot_rewrite_is_held_with_the_error_type_only(
    storage, tmp_path, default_mapping, monkeypatch
):
    profile = TransformProfile.objects.create(
        name="site", operations=[{"op": "prefix", "tag": "AccessionNumber", "value": "N-"}]
    )
    destination = Destination.objects.create(name="site", ae_title="SITE", host="127.0.0.1", port=1, transform=profile)
    from apps.routing.models import RoutingRule

    RoutingRule.objects.create(name="all", priority=1).destinations.add(destination)
    _, paths = synthetic_study(tmp_path / "in", count=2, patient_name="Secret^Name")
    [delivery_id] = run_steps(receive_study(storage, paths), until="route")
    delivery = Delivery.objects.select_related("transform").get(pk=delivery_id)
    items = list(delivery.items.select_related("instance"))
    real = transformed.engine.transform
    calls = []

    def breaks_on_the_first(source, target, profile, secret, **kwargs):
        calls.append(source)
        if len(calls) == 1:
            raise TypeError("Secret^Name in a value the engine could not encode")
        return real(source, target, profile, secret, **kwargs)

    monkeypatch.setattr(transformed.engine, "transform", breaks_on_the_first)

    prepared = transformed.prepare(delivery, items)
    transformed.hold(prepared)
    transformed.clean(prepared)

    assert len(prepared.files) == 1 and len(prepared.held) == 1
    [reason] = prepared.held.values()
    assert reason == "profile site could not rewrite this file (TypeError)"
    assert DeliveryItem.objects.filter(state=DeliveryItem.State.HELD).count() == 1
    assert not (storage / transformed.FOLDER / str(delivery_id)).exists()


def test_a_destination_given_a_profile_after_routing_never_gets_the_original_bytes(storage, tmp_path, default_mapping):
    from apps.routing.models import RoutingRule

    destination = Destination.objects.create(name="research", ae_title="RES", host="127.0.0.1", port=1)
    RoutingRule.objects.create(name="all", priority=1).destinations.add(destination)
    _, paths = synthetic_study(tmp_path / "in", count=1)
    [delivery_id] = run_steps(receive_study(storage, paths), until="route")
    assert Delivery.objects.get(pk=delivery_id).transform is None  # routed before the profile existed
    profile = TransformProfile.objects.create(name="research", deidentify=True, secret="env:ROUTER_NO_SUCH_SECRET")
    Destination.objects.filter(pk=destination.pk).update(transform=profile)

    delivery = Delivery.objects.select_related("transform", "destination").get(pk=delivery_id)
    prepared = transformed.prepare(delivery, list(delivery.items.select_related("instance")))

    assert prepared.files == [] and len(prepared.held) == 1  # held (its secret is missing), not sent as is
    assert "ROUTER_NO_SUCH_SECRET" in next(iter(prepared.held.values()))


def test_an_alternate_with_its_own_profile_receives_through_it(storage, tmp_path, default_mapping, monkeypatch):
    from apps.routing.models import RoutingRule

    monkeypatch.setenv("ROUTER_TEST_SECRET", "0123456789abcdef0123456789abcdef")
    profile = TransformProfile.objects.create(name="alt", deidentify=True, secret="env:ROUTER_TEST_SECRET")
    alternate = Destination.objects.create(name="alt", ae_title="ALT", host="127.0.0.1", port=2, transform=profile)
    primary = Destination.objects.create(name="main", ae_title="MAIN", host="127.0.0.1", port=1, alternate=alternate)
    RoutingRule.objects.create(name="all", priority=1).destinations.add(primary)
    _, paths = synthetic_study(tmp_path / "in", count=1)
    [delivery_id] = run_steps(receive_study(storage, paths), until="route")
    Delivery.objects.filter(pk=delivery_id).update(target=alternate)

    delivery = Delivery.objects.select_related("transform", "destination").get(pk=delivery_id)
    assert transformed.profile_for(delivery) == profile
    prepared = transformed.prepare(delivery, list(delivery.items.select_related("instance")))
    assert len(prepared.files) == 1 and prepared.sha256[0] != delivery.items.get().instance.sha256
    transformed.clean(prepared)


def test_replay_labels_choose_as_routing_does_and_read_the_profiles_once(django_assert_num_queries):
    from apps.routing.decide import Profiles, destinations_through, transform_for
    from apps.routing.models import RoutingRule, RuleTransform

    site = TransformProfile.objects.create(name="site")
    research = TransformProfile.objects.create(name="research")
    reading = Destination.objects.create(name="reading", ae_title="R", host="h", port=1, transform=site)
    archive = Destination.objects.create(name="archive", ae_title="A", host="h", port=2)
    low = RoutingRule.objects.create(name="low", priority=1)
    high = RoutingRule.objects.create(name="high", priority=9)
    RuleTransform.objects.create(rule=low, destination=archive, profile=site)
    RuleTransform.objects.create(rule=high, destination=archive, profile=research)
    matched = ["low", "high"]

    profiles = Profiles()
    with django_assert_num_queries(0):
        labels = destinations_through(["reading", "archive"], matched, profiles)

    assert labels == ["archive (via research)", "reading (via site)"]
    assert transform_for(archive, matched) == research.pk and transform_for(reading, matched) == site.pk


def test_a_deidentifying_profile_without_a_secret_holds_its_instances_saying_so(storage, tmp_path, default_mapping):
    from apps.routing.models import RoutingRule

    profile = TransformProfile.objects.create(name="research", deidentify=True)  # no secret at all
    destination = Destination.objects.create(name="research", ae_title="RES", host="h", port=1, transform=profile)
    RoutingRule.objects.create(name="all", priority=1).destinations.add(destination)
    _, paths = synthetic_study(tmp_path / "in", count=2)
    [delivery_id] = run_steps(receive_study(storage, paths), until="route")
    delivery = Delivery.objects.select_related("transform", "destination").get(pk=delivery_id)

    prepared = transformed.prepare(delivery, list(delivery.items.select_related("instance")))
    transformed.clean(prepared)

    assert prepared.files == [] and len(prepared.held) == 2
    assert all("needs a secret (at least 16 bytes" in reason for reason in prepared.held.values())
