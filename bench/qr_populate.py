"""Rows for qr_bench.py: studies, series and instances straight into the router's tables (COPY).

No files: C-FIND reads rows only. Every instance is `file_state="stored"` (a held study), with a received
row (persisted) as the persist step leaves it. Called in a process whose Django settings name the
benchmark's database (qr_bench.py sets DATABASE_URL before django.setup()).

The spread: `patients` patients (each study picks one at random, so some have one study and some eight),
1-3 series per study (CT, MR, CR, US, PT; a PR series now and then), `instances` (1-3 by default) instances
per series: far fewer than a real study has, which leaves the instance table (and the EXISTS the engine
asks of it per study) smaller than a site's. Dates spread over ten years; accession numbers unique; patient
names SURNAME^GIVEN from syllables, so that a prefix matches a few hundred studies.
"""

import json
import random
import time
from dataclasses import dataclass, field

SYLLABLES = ("KA", "LO", "MI", "NU", "RE", "SA", "TI", "VO", "BE", "DA", "FO", "GU", "HA", "JE", "PI", "ZO")
GIVEN = ("ANNA", "BEN", "CLARA", "DAVID", "EVA", "FRANK", "GRACE", "HUGO", "IDA", "JONAS", "KAREN", "LEON")
MODALITIES = ("CT", "CT", "CT", "MR", "MR", "CR", "US", "PT")
BODY_PARTS = ("HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE", "SPINE")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@dataclass
class Populated:
    studies: int = 0
    series: int = 0
    instances: int = 0
    seconds: float = 0.0
    patient_ids: list[str] = field(default_factory=list)  # of the studies, in order (for sampling keys)
    accession_numbers: list[str] = field(default_factory=list)
    patient_names: list[str] = field(default_factory=list)
    study_dates: list[str] = field(default_factory=list)


def _uid(prefix: str, n: int, *parts: int) -> str:
    return ".".join([prefix, str(n), *map(str, parts)])


class Copier:
    """Rows into a model's table with COPY, every concrete column filled: the given values (by attname), else
    the field's default as Django would have set it (computed once per table: one `now` for every row)."""

    def __init__(self, cursor, model, given: tuple[str, ...]) -> None:
        from django.db import connection

        fields = model._meta.concrete_fields
        self.cursor, self.table = cursor, model._meta.db_table
        self.columns = [f.column for f in fields]
        self.slots = [given.index(f.attname) if f.attname in given else None for f in fields]
        self.defaults = [None if f.attname in given else self._default(f, connection) for f in fields]
        missing = set(given) - {f.attname for f in fields}
        if missing:
            raise ValueError(f"{self.table} has no {sorted(missing)}")

    @staticmethod
    def _default(f, connection):
        value = f.get_default()
        if f.get_internal_type() == "JSONField":
            return json.dumps(value)
        return f.get_db_prep_save(value, connection)

    def write(self, rows: list[tuple]) -> None:
        sql = f"COPY {self.table} ({', '.join(self.columns)}) FROM STDIN"
        slots, defaults = self.slots, self.defaults
        with self.cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row([row[i] if i is not None else d for i, d in zip(slots, defaults, strict=True)])


def populate(*, studies: int, patients: int, instances: tuple[int, int] = (1, 3), seed: int = 19) -> Populated:
    from django.db import connection

    from apps.studies.models import FileState, Instance, ReceivedInstance, Series, Stage, Study

    rnd = random.Random(seed)
    root = f"2.25.{rnd.getrandbits(64)}"  # this run's own UID root: UIDs never collide with another run's
    people = []
    for p in range(patients):
        surname = "".join(rnd.choice(SYLLABLES) for _ in range(3))
        born = f"{rnd.randint(1930, 2020)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"
        people.append((f"PID{p:07d}", f"{surname}^{rnd.choice(GIVEN)}", born, rnd.choice("MF")))
    out = Populated()
    started = time.perf_counter()
    study_rows, series_rows, received_rows, instance_rows = [], [], [], []
    series_id = instance_id = 0
    for n in range(studies):
        study_id = n + 1
        patient_id, name, born, sex = rnd.choice(people)
        date = f"{rnd.randint(2016, 2025)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}"
        modality, part = rnd.choice(MODALITIES), rnd.choice(BODY_PARTS)
        kinds = [modality] + [rnd.choice((*MODALITIES, "PR")) for _ in range(rnd.randint(0, 2))]
        counts = [rnd.randint(*instances) for _ in kinds]
        study_uid, accession = _uid(root, 1, n), f"A{n + 1:09d}"
        study_rows.append(
            (
                study_id,
                study_uid,
                patient_id,
                name,
                born,
                sex,
                accession,
                date,
                f"{rnd.randint(7, 19):02d}{rnd.randint(0, 59):02d}{rnd.randint(0, 59):02d}",
                str(n % 10000),
                modality,
                "\\".join(dict.fromkeys(kinds)),
                part,
                f"{modality} {part}",
                "BENCH HOSPITAL",
                f"{rnd.choice(SYLLABLES)}{rnd.choice(SYLLABLES)}^DR",
                len(kinds),
                sum(counts),
                Stage.NOTIFIED.value,
            )
        )
        out.patient_ids.append(patient_id)
        out.accession_numbers.append(accession)
        out.patient_names.append(name)
        out.study_dates.append(date)
        for s, (kind, number) in enumerate(zip(kinds, counts, strict=True)):
            series_id += 1
            series_rows.append(
                (series_id, study_id, _uid(root, 2, n, s), str(s + 1), kind, part, f"{kind} series {s + 1}", number)
            )
            for i in range(number):
                instance_id += 1
                sop = _uid(root, 3, n, s, i)
                path = f"bench/{sop}.dcm"
                received_rows.append(
                    (
                        instance_id,
                        sop,
                        CT_IMAGE,
                        study_uid,
                        EXPLICIT_LE,
                        path,
                        39000,
                        ReceivedInstance.State.PERSISTED.value,
                    )
                )
                instance_rows.append(
                    (
                        instance_id,
                        study_id,
                        series_id,
                        instance_id,
                        sop,
                        CT_IMAGE,
                        EXPLICIT_LE,
                        str(i + 1),
                        path,
                        39000,
                        "0" * 64,
                        FileState.STORED.value,
                    )
                )
    study_cols = (
        "id",
        "study_instance_uid",
        "patient_id",
        "patient_name",
        "patient_birth_date",
        "patient_sex",
        "accession_number",
        "study_date",
        "study_time",
        "study_id",
        "modality",
        "modalities",
        "body_part",
        "study_description",
        "institution_name",
        "referring_physician_name",
        "num_series",
        "num_instances",
        "stage",
    )
    series_cols = (
        "id",
        "study_id",
        "series_instance_uid",
        "series_number",
        "modality",
        "body_part",
        "series_description",
        "num_instances",
    )
    received_cols = (
        "id",
        "sop_instance_uid",
        "sop_class_uid",
        "study_instance_uid",
        "transfer_syntax_uid",
        "path",
        "size",
        "state",
    )
    instance_cols = (
        "id",
        "study_id",
        "series_id",
        "received_id",
        "sop_instance_uid",
        "sop_class_uid",
        "transfer_syntax_uid",
        "instance_number",
        "path",
        "size",
        "sha256",
        "file_state",
    )
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor: COPY
        for model, cols, rows in (
            (Study, study_cols, study_rows),
            (Series, series_cols, series_rows),
            (ReceivedInstance, received_cols, received_rows),
            (Instance, instance_cols, instance_rows),
        ):
            Copier(raw, model, cols).write(rows)
            table = model._meta.db_table
            # The rows were given their ids: the sequence goes on after them (the C-MOVE study comes later).
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            cursor.execute(f"ANALYZE {table}")  # what autovacuum would have done on a site's database
    out.studies, out.series, out.instances = len(study_rows), len(series_rows), len(instance_rows)
    out.seconds = time.perf_counter() - started
    return out
