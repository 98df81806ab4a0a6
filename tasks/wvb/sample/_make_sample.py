"""Write the invented WorldValuesBench-shaped fixture in this folder (run once; output is committed).

Nothing here comes from the World Values Survey: the questions are our own wordings and the
answers are drawn from a seeded generator with a per-country lean, so that the divergence
ranking has something to rank.  The files follow WorldValuesBench's schema (Zhao et al. 2024,
github.com/Demon702/WorldValuesBench): ``question_metadata.json`` (question id -> question,
category, use_case, answer_scale_min/max, answer_data_type), ``full_demographic_qa.tsv``
(D_INTERVIEW, B_COUNTRY and other demographic columns) and ``full_value_qa.tsv`` (D_INTERVIEW,
then one column per value question; an empty cell is an unanswered question).

    python tasks/wvb/sample/_make_sample.py
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (survey country as WorldValuesBench spells B_COUNTRY, interview-id prefix); Germany is not a
# target culture: its answers count towards the all-country distribution only.
COUNTRIES = [("China", 156), ("Indonesia", 360), ("Iran", 364), ("Mexico", 484), ("South Korea", 410),
             ("Great Britain", 826), ("United States", 840), ("Germany", 276)]
RESPONDENTS = 12

IMPORTANCE = ["close relatives", "old friends", "free evenings", "public affairs", "paid work", "faith",
              "neighbourhood life", "sports clubs", "music", "learning new skills"]
AGREEMENT = ["people should retire early", "cities are better places to raise children than villages",
             "newspapers can usually be trusted", "young people should live with their parents until they marry",
             "it is fine to borrow money for a holiday", "schools should teach less homework",
             "shops should close on one day of the week", "strangers can generally be relied upon",
             "older people deserve more say in family decisions", "hard work brings success in the long run"]
YES_NO = ["taking part in a local festival this year", "volunteering for a charity", "signing a petition",
          "joining a neighbourhood association", "giving money to a street musician", "learning a second language",
          "owning a pet", "growing your own vegetables"]
JUSTIFIABLE = ["skipping a fare on public transport", "haggling at a fixed-price shop", "leaving a party without saying goodbye",
               "reading someone else's letters", "telling a white lie to a friend", "keeping found money",
               "calling in sick to rest", "jumping a queue"]
CONFIDENCE = ["the post office", "local courts", "television news", "large companies", "universities",
              "trade unions", "the army", "charities", "hospitals", "the weather service"]


def questions() -> dict[str, dict]:
    meta = {
        "B_COUNTRY": {"question": "Which country was the interview held in?", "category": "Technical Variables",
                      "use_case": "demographic", "answer_scale_min": "", "answer_scale_max": "",
                      "answer_data_type": "non_ordinal"},
        "D_INTERVIEW": {"question": "Interview identifier.", "category": "Technical Variables",
                        "use_case": "demographic", "answer_scale_min": "", "answer_scale_max": "",
                        "answer_data_type": "non_ordinal"},
        "H_URBRURAL": {"question": "Was the interview held in a town or in the countryside?",
                       "category": "Technical Variables", "use_case": "demographic", "answer_scale_min": "",
                       "answer_scale_max": "", "answer_data_type": "non_ordinal"},
    }
    specs = (
        [(f"How much does {x} matter in your life? 1 stands for 'a great deal' and 4 for 'not at all'.",
          "Everyday priorities", 1, 4) for x in IMPORTANCE]
        + [(f"Do you agree that {x}? 1 stands for 'fully agree' and 5 for 'fully disagree'.",
            "Opinions", 1, 5) for x in AGREEMENT]
        + [(f"Have you considered {x}? 1 stands for 'yes' and 2 for 'no'.", "Participation", 1, 2) for x in YES_NO]
        + [(f"Can {x} ever be excused? 1 stands for 'never' and 10 for 'always'.", "Ethics", 1, 10)
           for x in JUSTIFIABLE]
        + [(f"How far do you trust {x}? 1 stands for 'completely' and 4 for 'not at all'.", "Trust", 1, 4)
           for x in CONFIDENCE]
    )
    # ids are not contiguous (as in the survey, where some numbers are demographic questions)
    numbers = list(range(1, 41)) + list(range(101, 107))
    for number, (text, category, low, high) in zip(numbers, specs):
        meta[f"Q{number}"] = {"question": text, "category": category, "use_case": "value",
                              "answer_scale_min": low, "answer_scale_max": high, "answer_data_type": "ordinal"}
    return meta


def main() -> None:
    rng = random.Random(20240521)
    meta = questions()
    value_ids = [q for q, m in meta.items() if m["use_case"] == "value"]
    demographic, values = [], []
    for country, prefix in COUNTRIES:
        leans = {q: rng.random() for q in value_ids}  # where on the scale this country tends to answer
        for n in range(1, RESPONDENTS + 1):
            interview = prefix * 1_000_000 + 70_000 + n
            demographic.append({"D_INTERVIEW": interview, "B_COUNTRY": country,
                                "H_URBRURAL": rng.choice(["Urban", "Rural"])})
            row = {"D_INTERVIEW": interview}
            for q in value_ids:
                low, high = meta[q]["answer_scale_min"], meta[q]["answer_scale_max"]
                if rng.random() < 0.03:
                    row[q] = ""  # unanswered
                    continue
                centre = low + leans[q] * (high - low)
                row[q] = min(high, max(low, round(rng.gauss(centre, (high - low) / 4 + 0.3))))
            values.append(row)
    # Iran leaves Q3 unanswered four times: 8 answers, under the 10 a question needs
    for row in values[2 * RESPONDENTS: 2 * RESPONDENTS + 4]:
        row["Q3"] = ""
    (HERE / "question_metadata.json").write_text(json.dumps(meta, indent=4) + "\n", encoding="utf-8")
    for name, rows in (("full_demographic_qa.tsv", demographic), ("full_value_qa.tsv", values)):
        with (HERE / name).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, list(rows[0]), delimiter="\t", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
