"""One facts builder: routing a stored study and dry-running its file give the same decisions, for rules on
every attribute the rules can read."""

import pytest
from pydicom import dcmread

from apps.configuration.services import config_import
from apps.routing.models import RoutingDecision
from apps.routing.services import dry_run, dry_run_study, facts_from_dataset, rules_engine

from ..support.dicom import shipped, synthetic_study
from ..support.pipeline import receive_study, run_steps

pytestmark = pytest.mark.django_db(transaction=True)

RULES = """
destinations:
  - {name: neuro, ae_title: NEURO, host: 127.0.0.1, port: 11190}
  - {name: body, ae_title: BODY, host: 127.0.0.1, port: 11191}
  - {name: research, ae_title: RESEARCH, host: 127.0.0.1, port: 11192}
  - {name: stat, ae_title: STAT, host: 127.0.0.1, port: 11193}
  - {name: any, ae_title: ANY, host: 127.0.0.1, port: 11194}
priority_keywords:
  - {keyword: STROKE, priority: STAT}
rules:
  - {name: head, priority: 50, match: {modality: CT, body_part: HEAD}, destinations: [neuro]}
  - {name: described, priority: 40, match: {study_description: "(?i)abdo"}, destinations: [body]}
  - name: from-modality
    priority: 30
    criteria:
      - {attribute: calling_ae, operator: equals, value: MODALITY}
      - {attribute: institution, operator: contains, value: "a"}
      - {attribute: sop_class, operator: in, value: "1.2.840.10008.5.1.4.1.1.4,1.2.840.10008.5.1.4.1.1.2"}
    destinations: [research]
  - {name: stat, priority: 20, match: {priority: STAT}, destinations: [stat]}
  - name: by-keyword
    priority: 10
    criteria: [{attribute: keyword, keyword: Manufacturer, operator: regex, value: "(?i)^(ge|siemens|toshiba)"}]
    destinations: [any]
  - name: referred
    priority: 5
    criteria: [{attribute: referring_physician, operator: present}]
    destinations: [any]
"""


def studies(tmp_path) -> list:
    files = [shipped("ct"), shipped("mr"), shipped("jpeg2000"), shipped("rle")]
    for body_part, description in (("HEAD", ""), ("CHEST", "CT ABDOMEN PELVIS"), ("", "CODE STROKE")):
        _, paths = synthetic_study(tmp_path / body_part.lower(), count=1, body_part=body_part)
        ds = dcmread(paths[0])
        ds.StudyDescription = description
        ds.save_as(paths[0])
        files += paths
    return files


def test_routing_and_dry_run_decide_the_same_on_the_same_studies(storage, tmp_path, default_mapping):
    config_import(RULES)
    _, keywords = rules_engine()
    checked = 0
    for path in studies(tmp_path):
        study_id = receive_study(storage, [path])
        run_steps(study_id, until="route")
        routed = RoutingDecision.objects.get(study_id=study_id).destinations

        from_file = dry_run(
            facts=facts_from_dataset(dcmread(path), keywords, calling_ae="MODALITY", called_ae="ROUTER")
        )

        assert from_file.destinations == routed, path.name
        assert dry_run_study(study_id=study_id).destinations == routed, path.name
        checked += 1
    decided = [d.destinations for d in RoutingDecision.objects.all()]
    assert checked == 7 and len({tuple(d) for d in decided}) >= 4  # the rules told the studies apart
    assert any("stat" in d for d in decided) and any("neuro" in d for d in decided)
