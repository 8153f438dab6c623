"""Which earlier studies are chosen as priors, and why the others are not: the pure selection function."""

from datetime import date

import pytest

from apps.priors.selection import Criteria, Match, Study, age_text, parse_da, priors_choose, years_before

TODAY = date(2026, 6, 1)
CT_HEAD = Study("1.2.new", "20240301", frozenset({"CT"}), frozenset({"HEAD"}))


def prior(uid: str, day: str, modalities=("CT",), parts=("HEAD",)) -> Study:
    return Study(uid, day, frozenset(modalities), frozenset(parts))


def chosen(choices) -> list[str]:
    return [c.study.study_instance_uid for c in choices if c.chosen]


def reasons(choices) -> dict[str, str]:
    return {c.study.study_instance_uid: c.reason for c in choices}


def test_it_chooses_the_same_modality_newest_first_and_says_why():
    candidates = [
        prior("1.old", "20200115"),
        prior("1.mr", "20231201", modalities=("MR",)),
        prior("1.recent", "20220301"),
    ]
    choices = priors_choose(CT_HEAD, candidates, Criteria(Match.MODALITY, max_age_years=5, max_count=2), today=TODAY)
    assert chosen(choices) == ["1.recent", "1.old"]
    assert reasons(choices)["1.recent"] == "same modality CT, 2 years old"
    assert reasons(choices)["1.old"] == "same modality CT, 4 years old"
    assert reasons(choices)["1.mr"] == "not the same modality (MR; this study CT)"


def test_it_keeps_at_most_max_count_and_says_which_were_cut():
    candidates = [prior(f"1.{year}", f"{year}0101") for year in (2019, 2021, 2023, 2022)]
    choices = priors_choose(CT_HEAD, candidates, Criteria(Match.MODALITY, max_age_years=None, max_count=2), today=TODAY)
    assert chosen(choices) == ["1.2023", "1.2022"]
    assert reasons(choices)["1.2021"].endswith("but beyond the 2 newest relevant")
    assert reasons(choices)["1.2019"].endswith("but beyond the 2 newest relevant")


def test_it_leaves_out_studies_older_than_the_age_limit_counted_from_the_new_studys_date():
    candidates = [prior("1.in", "20210302"), prior("1.edge", "20210301"), prior("1.out", "20210228")]
    choices = priors_choose(CT_HEAD, candidates, Criteria(Match.MODALITY, max_age_years=3, max_count=5), today=TODAY)
    assert chosen(choices) == ["1.in", "1.edge"]
    assert reasons(choices)["1.out"] == "same modality CT, but older than 3 year(s) (3 years old)"


def test_without_a_date_on_the_new_study_age_counts_from_today():
    undated = Study("1.new", "", frozenset({"CT"}), frozenset())
    candidates = [prior("1.a", "20250601"), prior("1.b", "20230531")]
    choices = priors_choose(undated, candidates, Criteria(Match.MODALITY, max_age_years=2, max_count=5), today=TODAY)
    assert chosen(choices) == ["1.a"]
    assert reasons(choices)["1.a"] == "same modality CT, 1 year old"


@pytest.mark.parametrize("bad", ["", "2023", "20231301", "20230230", "2023-01-01", "abcdefgh"])
def test_a_prior_without_a_valid_date_is_left_out_when_there_is_an_age_limit(bad):
    choices = priors_choose(CT_HEAD, [prior("1.x", bad)], Criteria(Match.MODALITY, 5, 2), today=TODAY)
    assert chosen(choices) == []
    assert reasons(choices)["1.x"] == "same modality CT, but no valid study date (age unknown)"


def test_without_an_age_limit_undated_priors_come_after_dated_ones():
    candidates = [prior("1.undated", ""), prior("1.dated", "20100101")]
    choices = priors_choose(CT_HEAD, candidates, Criteria(Match.MODALITY, None, 5), today=TODAY)
    assert chosen(choices) == ["1.dated", "1.undated"]
    assert reasons(choices)["1.undated"] == "same modality CT, date unknown"


def test_the_new_study_itself_a_later_study_and_duplicates_are_never_priors():
    candidates = [
        prior("1.2.new", "20240301"),
        prior("1.later", "20240302"),
        prior("1.same-day", "20240301"),
        prior("1.same-day", "20240301"),
        prior("", "20200101"),
    ]
    choices = priors_choose(CT_HEAD, candidates, Criteria(Match.MODALITY, 5, 5), today=TODAY)
    assert chosen(choices) == ["1.same-day"]
    assert [c.reason for c in choices if c.chosen] == ["same modality CT, same day"]
    verdicts = [(c.study.study_instance_uid, c.reason) for c in choices if not c.chosen]
    assert verdicts == [
        ("1.2.new", "the new study itself"),
        ("1.later", "same modality CT, but dated after this study (20240302)"),
        ("1.same-day", "listed twice"),
        ("", "no Study Instance UID"),
    ]


def test_body_part_matching_and_its_combinations():
    mr_head = prior("1.mr-head", "20230101", modalities=("MR",), parts=("HEAD",))
    ct_chest = prior("1.ct-chest", "20230201", modalities=("CT",), parts=("CHEST",))
    ct_head = prior("1.ct-head", "20220101")
    us_leg = prior("1.us-leg", "20230301", modalities=("US",), parts=("LEG",))
    candidates = [mr_head, ct_chest, ct_head, us_leg]

    def run(match):
        return priors_choose(CT_HEAD, candidates, Criteria(match, 5, 10), today=TODAY)

    assert chosen(run(Match.BODY_PART)) == ["1.mr-head", "1.ct-head"]
    assert reasons(run(Match.BODY_PART))["1.ct-chest"] == "not the same body part (CHEST; this study HEAD)"
    assert chosen(run(Match.MODALITY_OR_BODY_PART)) == ["1.ct-chest", "1.mr-head", "1.ct-head"]
    assert (
        reasons(run(Match.MODALITY_OR_BODY_PART))["1.ct-head"]
        == "same modality CT and same body part HEAD, 2 years old"
    )
    assert reasons(run(Match.MODALITY_OR_BODY_PART))["1.us-leg"] == "neither the same modality nor the same body part"
    assert chosen(run(Match.MODALITY_AND_BODY_PART)) == ["1.ct-head"]
    assert reasons(run(Match.MODALITY_AND_BODY_PART))["1.ct-head"] == "same modality CT and body part HEAD, 2 years old"
    assert chosen(run(Match.ANY)) == ["1.us-leg", "1.ct-chest", "1.mr-head", "1.ct-head"]


def test_a_prior_with_no_modality_given_is_not_the_same_modality():
    choices = priors_choose(CT_HEAD, [prior("1.x", "20230101", modalities=())], Criteria(), today=TODAY)
    assert reasons(choices)["1.x"] == "not the same modality (none given; this study CT)"


def test_ties_on_the_date_break_on_the_uid_whatever_the_archives_order():
    a, b = prior("1.a", "20230101"), prior("1.b", "20230101")
    for order in ([a, b], [b, a]):
        assert chosen(priors_choose(CT_HEAD, order, Criteria(Match.MODALITY, 5, 1), today=TODAY)) == ["1.a"]


def test_date_helpers():
    assert parse_da(" 20240229 ") == date(2024, 2, 29)
    assert parse_da("20230229") is None
    assert years_before(date(2024, 2, 29), 1) == date(2023, 2, 28)
    assert age_text(None, None) == "date unknown"
    assert age_text(1, 0) == "1 day old"
    assert age_text(400, 1) == "1 year old"
