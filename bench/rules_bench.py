"""Rule matching benchmark: the compiled `Engine` against a naive evaluation built on `criterion_matches`.

Run: .venv/bin/python bench/rules_bench.py [--rules 1000] [--studies 2000] [--repeat 5]

Both sides decide every study, and the decisions (matched rules, destinations) must be identical, so the
benchmark is also a correctness check of the engine against the reference interpretation of a criterion.
Goal: under 1 ms per study for the compiled engine. Results go to bench/results/rules.json.
"""

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time as clock
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TypeVar

# Runnable from anywhere: the repository root holds the `apps` package. apps.routing.rules is pure
# Python (no models), so no Django setup is needed.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apps.routing.rules import Criterion, Engine, Rule, Window, criterion_matches  # noqa: E402

SEED = 20240304  # fixed, so every run measures the same rules and studies
GOAL_MS = 1.0
RESULTS = ROOT / "bench" / "results" / "rules.json"

# Value pools shared by rules and studies, so criteria match a realistic fraction of studies.
MODALITIES = ["CT", "MR", "CR", "DX", "US", "MG", "NM", "PT", "XA", "SR"]
MODALITY_WEIGHTS = [25, 20, 15, 12, 10, 6, 3, 4, 3, 2]  # CT/MR/plain film dominate a real worklist
BODY_PARTS = ["HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE", "SPINE", "CSPINE", "LSPINE", "SHOULDER", "HAND"]
BODY_PARTS += ["FOOT", "BREAST", "HEART", "ABDOMENPELVIS", "WHOLEBODY"]
BODY_FRAGMENTS = ["SPINE", "CHEST", "ABDOMEN", "PELVIS", "HEAD", "KNEE"]  # for `contains`
DESCRIPTION_PATTERNS = [
    r"(?i)head|brain",
    r"\bw/?o\b contrast",
    r"^CT\b",
    r"angio",
    r"chest.*\b(pa|lat)\b",
    r"\b(c|t|l)[- ]?spine\b",
    r"with contrast$",
    r"mammo|tomo",
]
DESCRIPTION_WORDS = {"HEAD": ["HEAD", "BRAIN"], "CHEST": ["CHEST PA LAT", "CHEST"], "CSPINE": ["C-SPINE"]}
DESCRIPTION_WORDS |= {"LSPINE": ["L SPINE"], "BREAST": ["MAMMO SCREENING", "TOMO BREAST"]}
CONTRAST = ["W/O CONTRAST", "WO CONTRAST", "WITH CONTRAST", "ANGIO", "", ""]
INSTITUTIONS = [f"{name} Hospital" for name in ["St Mary", "General", "Mercy", "Riverside", "Lakeside"]]
INSTITUTIONS += [f"{name} Clinic" for name in ["North", "South", "East", "West", "Valley", "Harbor"]]
INSTITUTIONS += [f"{name} Imaging Center" for name in ["Oak", "Pine", "Cedar", "Maple", "Elm", "Birch"]]
INSTITUTIONS += ["University Medical Center", "Children's Hospital", "Veterans Hospital"]  # 20 in all
PRIORITIES = ["STAT", "URGENT", "ROUTINE"]
CALLING_AES = [f"{m}{n:02d}" for m in ["CT", "MR", "CR", "DX", "US"] for n in range(1, 4)] + ["PACS", "MODLINK"]
PHYSICIANS = ["DOE^JOHN", "SMITH^ANNA", "GARCIA^LUIS", "CHEN^WEI", "MUELLER^KARL", ""]
SOP_CLASSES = {  # modality -> its image storage SOP class
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
    "SR": "1.2.840.10008.5.1.4.1.1.88.11",
}
EXTRA_SOP_CLASSES = [  # what rules exclude with not_in: presentation state, key objects, secondary capture
    "1.2.840.10008.5.1.4.1.1.11.1",
    "1.2.840.10008.5.1.4.1.1.88.59",
    "1.2.840.10008.5.1.4.1.1.7",
]
NIGHTS = Window(frozenset(range(5)), time(19), time(7), "America/New_York")  # weeknights, crosses midnight

Facts = dict[str, object]


def criterion_for(attribute: str, rnd: random.Random) -> Criterion:
    """One criterion on `attribute`, with the operators rules really use on it."""
    if attribute == "modality":
        if rnd.random() < 0.6:
            return Criterion("modality", "equals", rnd.choices(MODALITIES, MODALITY_WEIGHTS)[0])
        return Criterion("modality", "in", ", ".join(rnd.sample(MODALITIES, rnd.randint(2, 3))))
    if attribute == "body_part":
        if rnd.random() < 0.6:
            return Criterion("body_part", "equals", rnd.choice(BODY_PARTS))
        return Criterion("body_part", "contains", rnd.choice(BODY_FRAGMENTS))
    if attribute == "study_description":
        return Criterion("study_description", "regex", rnd.choice(DESCRIPTION_PATTERNS))
    if attribute == "institution":
        return Criterion("institution", "equals", rnd.choice(INSTITUTIONS))
    if attribute == "priority":
        return Criterion("priority", "in", ",".join(rnd.sample(PRIORITIES, rnd.randint(1, 2))))
    if attribute == "calling_ae":
        return Criterion("calling_ae", "equals", rnd.choice(CALLING_AES))
    return Criterion("sop_class", "not_in", ",".join(rnd.sample(EXTRA_SOP_CLASSES, rnd.randint(1, 3))))


ATTRIBUTES = ["modality", "body_part", "study_description", "institution", "priority", "calling_ae", "sop_class"]
ATTRIBUTE_WEIGHTS = [30, 20, 15, 10, 10, 10, 5]


def make_rules(n: int, rnd: random.Random) -> list[Rule]:
    rules = []
    for i in range(n):
        # Distinct attributes per rule: two `equals` on one attribute would make a rule that never matches.
        count = rnd.choices([1, 2, 3, 4], [35, 35, 20, 10])[0]
        attributes: list[str] = []
        while len(attributes) < count:
            attribute = rnd.choices(ATTRIBUTES, ATTRIBUTE_WEIGHTS)[0]
            if attribute not in attributes:
                attributes.append(attribute)
        rules.append(
            Rule(
                id=i,
                name=f"rule-{i:04d}",
                priority=rnd.randint(0, 200),  # spread, with ties so the name tie-break is exercised
                criteria=tuple(criterion_for(a, rnd) for a in attributes),
                destinations=tuple(f"d{d}" for d in rnd.sample(range(50), rnd.randint(1, 3))),
                exclusive=rnd.random() < 0.05,
                fallback=rnd.random() < 0.01,
                windows=(NIGHTS,) if rnd.random() < 0.10 else (),
            )
        )
    return rules


def make_study(rnd: random.Random) -> tuple[Facts, datetime]:
    """Facts shaped like services.study_facts, and the moment the study is routed (within one week)."""
    modality = rnd.choices(MODALITIES, MODALITY_WEIGHTS)[0]
    modalities = [modality] + (["CT"] if modality == "PT" else ["SR"] if rnd.random() < 0.1 else [])
    part = "BREAST" if modality == "MG" else rnd.choice(BODY_PARTS)
    words = rnd.choice(DESCRIPTION_WORDS.get(part, [part]))
    description = f"{modality} {words} {rnd.choice(CONTRAST)}".strip()
    sop_classes = {SOP_CLASSES[m] for m in modalities}
    if rnd.random() < 0.3:
        sop_classes.add(rnd.choice(EXTRA_SOP_CLASSES))
    facts: Facts = {
        "modality": modalities,
        "body_part": part if rnd.random() < 0.9 else "",  # body part is often missing in real headers
        "study_description": description,
        "institution": rnd.choice(INSTITUTIONS) if rnd.random() < 0.95 else "",
        "referring_physician": rnd.choice(PHYSICIANS),
        "priority": rnd.choices(PRIORITIES + [""], [10, 20, 60, 10])[0],
        "calling_ae": rnd.choice(CALLING_AES),
        "called_ae": "ROUTER",
        "sop_class": sorted(sop_classes),
    }
    at = datetime(2024, 3, 4, tzinfo=UTC) + timedelta(seconds=rnd.randrange(7 * 24 * 3600))
    return facts, at


Outcome = tuple[list[str], list[str]]  # (matched rule names, destinations)
T = TypeVar("T")


def naive_evaluate(rules: list[Rule], facts: Mapping[str, object], at: datetime) -> Outcome:
    """What Engine.evaluate decides, without compiling: sort per study, interpret every criterion."""
    matched: list[str] = []
    destinations: list[str] = []

    def applies(rule: Rule) -> bool:
        if rule.windows and not any(w.open_at(at) for w in rule.windows):
            return False
        return all(criterion_matches(c, facts) for c in rule.criteria)

    def take(rule: Rule) -> None:
        matched.append(rule.name)
        destinations.extend(d for d in rule.destinations if d not in destinations)

    ordered = sorted(rules, key=lambda r: (-r.priority, r.name))  # same order as the engine
    for rule in ordered:
        if not rule.fallback and applies(rule):
            take(rule)
            if rule.exclusive:  # an exclusive match stops the regular rules
                break
    if not matched:  # fallbacks only when nothing else matched, and the first that applies wins
        for rule in ordered:
            if rule.fallback and applies(rule):
                take(rule)
                break
    return matched, destinations


def timed(run: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Median wall time (seconds) of `repeat` runs (robust to a noisy run), and what the last one returned."""
    times = []
    for _ in range(repeat):
        start = clock.perf_counter()
        outcomes = run()
        times.append(clock.perf_counter() - start)
    return statistics.median(times), outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rnd = random.Random(SEED)
    rules = make_rules(args.rules, rnd)
    studies = [make_study(rnd) for _ in range(args.studies)]

    # Build time is paid once per rule change (services caches the engine), so it is reported apart.
    build_s, engine = timed(lambda: Engine(rules), args.repeat)

    def compiled() -> list[Outcome]:
        return [(d.matched, d.destinations) for d in (engine.evaluate(f, at) for f, at in studies)]

    compiled_s, compiled_out = timed(compiled, args.repeat)
    naive_s, naive_out = timed(lambda: [naive_evaluate(rules, f, at) for f, at in studies], args.repeat)

    # Correctness: the engine must decide exactly as the reference interpretation does, study by study.
    differ = [i for i, (c, n) in enumerate(zip(compiled_out, naive_out, strict=True)) if c != n]
    if differ:  # not `assert`: the check must hold under python -O too
        first = differ[0]
        sys.exit(f"{len(differ)} studies decided differently; #{first}: {compiled_out[first]} != {naive_out[first]}")

    compiled_us = compiled_s / args.studies * 1e6
    naive_us = naive_s / args.studies * 1e6
    ratio = naive_s / compiled_s
    passed = compiled_us / 1000 < GOAL_MS
    matched_mean = statistics.mean(len(m) for m, _ in compiled_out)
    unrouted = sum(not d for _, d in compiled_out)

    print(f"rules={args.rules} studies={args.studies} repeat={args.repeat} (medians), seed={SEED}")
    print(f"{'':22}{'per study µs':>14}{'per study ms':>14}{'total ms':>12}")
    print(f"{'engine build':22}{'':>14}{'':>14}{build_s * 1e3:12.2f}")
    print(f"{'compiled evaluate':22}{compiled_us:14.1f}{compiled_us / 1e3:14.4f}{compiled_s * 1e3:12.1f}")
    print(f"{'naive evaluate':22}{naive_us:14.1f}{naive_us / 1e3:14.4f}{naive_s * 1e3:12.1f}")
    print(f"ratio naive/compiled: {ratio:.2f}x")
    print(f"decisions identical for all {args.studies} studies; {matched_mean:.1f} rules matched per study")
    print(f"goal: < {GOAL_MS:g} ms per study (compiled): {'PASS' if passed else 'FAIL'} ({compiled_us / 1e3:.3f} ms)")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "parameters": {"rules": args.rules, "studies": args.studies, "repeat": args.repeat, "seed": SEED},
        "medians": {
            "build_ms": build_s * 1e3,
            "compiled_us_per_study": compiled_us,
            "naive_us_per_study": naive_us,
        },
        "ratio_naive_over_compiled": ratio,
        "decisions": {"identical": True, "matched_per_study": matched_mean, "unrouted": unrouted},
        "goal": {"compiled_ms_per_study_below": GOAL_MS, "passed": passed},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
