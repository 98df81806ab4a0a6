"""The general_ppl tasks: culture-neutral prose, disjoint selection/evaluation texts, harness wiring."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tasks"
TASK_DIR = TASKS / "general_ppl"
FILES = {"selection": TASK_DIR / "selection.txt", "evaluation": TASK_DIR / "evaluation.txt"}
REGISTERS = {"instructions", "narrative", "explanation", "correspondence"}
TASK_NAMES = {"general_ppl": "evaluation", "general_ppl_selection": "selection"}


def _load_utils(path: Path = TASK_DIR / "utils.py"):
    spec = importlib.util.spec_from_file_location(f"general_ppl_utils_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = _load_utils()


def _docs(name: str) -> list[dict]:
    return utils.load_documents(name)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])[\"']?\s+|\n+", text)
    return [" ".join(_words(p)) for p in parts if _words(p)]


# ---------------------------------------------------------------------------------------------
# Culture word list.  Deliberately broad, but without words that are also ordinary English
# (turkey, china, chad, jordan, nice, reading, bath, mobile, polish, pound, won, real, mark, ...).
# Entries with a space are matched as whole-word phrases.
COUNTRIES = """
afghanistan albania algeria andorra angola argentina armenia australia austria azerbaijan
bahamas bahrain bangladesh barbados belarus belgium belize benin bhutan bolivia bosnia
botswana brazil brunei bulgaria burkina burundi cambodia cameroon canada chile colombia
comoros congo croatia cuba cyprus czechia czech denmark djibouti dominica ecuador egypt
eritrea estonia eswatini ethiopia fiji finland france gabon gambia germany ghana greece
grenada guatemala guyana haiti honduras hungary iceland india indonesia iran iraq ireland
israel italy jamaica japan kazakhstan kenya kiribati korea kosovo kuwait kyrgyzstan laos latvia
lebanon lesotho liberia libya liechtenstein lithuania luxembourg madagascar malawi malaysia
maldives mali malta mauritania mauritius mexico micronesia moldova monaco mongolia montenegro
morocco mozambique myanmar burma namibia nauru nepal netherlands holland nicaragua niger nigeria
macedonia norway oman pakistan palau palestine panama paraguay peru philippines poland portugal
qatar romania russia rwanda samoa senegal serbia seychelles singapore slovakia slovenia somalia
spain sudan suriname sweden switzerland syria taiwan tajikistan tanzania thailand togo tonga
tunisia turkmenistan tuvalu uganda ukraine uruguay uzbekistan vanuatu vatican venezuela vietnam
yemen zambia zimbabwe england scotland wales britain usa uk america americas emirates
tibet africa asia europe scandinavia arabia
"""
NATIONALITIES = """
afghan albanian algerian american andorran angolan argentine argentinian armenian australian
austrian azerbaijani bangladeshi belarusian belgian bolivian bosnian brazilian british bulgarian
cambodian cameroonian canadian chilean chinese colombian congolese croatian cuban cypriot danish
dutch ecuadorian egyptian english eritrean estonian ethiopian filipino finnish french georgian
german ghanaian greek guatemalan haitian honduran hungarian icelandic indian indonesian iranian
iraqi irish israeli italian jamaican japanese jordanian kazakh kenyan korean kuwaiti lao laotian
latvian lebanese liberian libyan lithuanian malagasy malaysian maltese mexican moldovan
mongolian montenegrin moroccan mozambican namibian nepali nepalese nicaraguan nigerian
norwegian omani pakistani palestinian panamanian paraguayan persian peruvian portuguese qatari
romanian russian rwandan saudi scottish senegalese serbian singaporean slovak slovenian somali
spanish sudanese swedish swiss syrian taiwanese tajik tanzanian thai tibetan tunisian turkish
turkmen ugandan ukrainian uruguayan uzbek venezuelan vietnamese welsh yemeni zambian zimbabwean
african asian european scandinavian nordic balkan caribbean arab arabic latino hispanic celtic
slavic yankee aussie kiwi brit
"""
LANGUAGES = """
mandarin cantonese hindi urdu bengali punjabi tamil telugu swahili hebrew farsi latin esperanto
yiddish hausa yoruba zulu amharic tagalog
"""
CITIES = """
london paris tokyo beijing shanghai delhi mumbai bombay kolkata calcutta chennai bangalore cairo
lagos nairobi moscow berlin madrid rome istanbul dubai sydney melbourne toronto chicago boston
seattle miami vancouver montreal lima bogota santiago seoul bangkok jakarta manila karachi lahore
dhaka tehran baghdad riyadh jerusalem athens vienna prague warsaw budapest amsterdam brussels
stockholm oslo copenhagen helsinki dublin edinburgh glasgow manchester liverpool lisbon barcelona
milan munich hamburg frankfurt kyiv kiev johannesburg casablanca accra kinshasa hanoi osaka kyoto
havana caracas auckland geneva zurich venice naples shenzhen guangzhou taipei kabul damascus
beirut doha marseille lyon seville valencia krakow bucharest belgrade sofia zagreb tbilisi
yerevan baku tashkent almaty ulaanbaatar kathmandu colombo yangon hollywood washington texas
california florida
"""
CURRENCIES = """
dollar dollars euro euros yen yuan renminbi rupee rupees peso pesos franc francs ruble rubles
rouble roubles lira lire dinar dinars dirham dirhams baht krona kronor krone kroner zloty
zlotys shekel shekels naira shilling shillings ringgit rupiah riyal riyals rial rials rand
cents pence sterling kwacha cedi birr taka hryvnia forint lev leu kuna guilder deutschmark
"""
RELIGION_AND_HOLIDAYS = """
christian christians christianity christmas easter catholic protestant muslim muslims
islam islamic hindu hindus hinduism buddhist buddhists buddhism buddha jewish jews judaism
sikh sikhs jain shinto taoist church churches mosque mosques synagogue synagogues cathedral
bible quran koran torah allah jesus christ ramadan eid diwali holi hanukkah passover
thanksgiving halloween valentine kwanzaa vesak
"""
LEAGUES_AND_NATIONAL_THINGS = """
nfl nba mlb nhl fifa uefa bundesliga olympics olympic superbowl baseball rugby
sushi pizza pasta spaghetti tacos burrito kimchi curry croissant baguette paella hamburger
kebab dumplings samosa tortilla
"""

CULTURE_WORDS = frozenset(
    " ".join((COUNTRIES, NATIONALITIES, LANGUAGES, CITIES, CURRENCIES, RELIGION_AND_HOLIDAYS,
              LEAGUES_AND_NATIONAL_THINGS)).split()
)
# Multi-word names, matched as whole-word phrases (their parts are ordinary English words).
CULTURE_PHRASES = frozenset(
    " ".join(p.split())
    for p in """sri lanka|new zealand|south africa|saudi arabia|united states|united kingdom|
    costa rica|el salvador|sierra leone|east timor|ivory coast|puerto rico|hong kong|new york|
    los angeles|san francisco|las vegas|mexico city|sao paulo|rio de janeiro|buenos aires|
    cape town|addis ababa|ho chi minh|kuala lumpur|tel aviv|abu dhabi|st petersburg|phnom penh|
    premier league|super bowl|world cup|la liga|serie a""".split("|")
)


def culture_hits(text: str) -> set[str]:
    """Culture words/phrases found in ``text`` (whole words, case-insensitive, simple plurals)."""
    words = _words(text)
    hits = set()
    for word in words:
        base = word[:-2] if word.endswith("'s") else word
        for form in (base, base[:-1] if base.endswith("s") else None):
            if form and form in CULTURE_WORDS:
                hits.add(form)
                break
    joined = f" {' '.join(words)} "
    hits.update(p for p in CULTURE_PHRASES if f" {p} " in joined)
    return hits


def midsentence_capitals(text: str) -> list[str]:
    """Capitalized words not at the start of a line or sentence (names, places), except "I"."""
    found = []
    for match in re.finditer(r"\b[A-Z][A-Za-z'-]*", text):
        before = text[: match.start()].rstrip(" \t\"'(")
        if not before or before[-1] in "\n.!?:" or match.group() in {"I", "I'm", "I've", "I'd", "I'll"}:
            continue
        found.append(match.group())
    return found


# ---------------------------------------------------------------------------------------------
# Harness wiring


@pytest.fixture(scope="module")
def task_manager():
    from lm_eval.tasks import TaskManager

    # include_defaults=False: only this repository's tasks (fast, and independent of whether the
    # start-up hook can find the task folder yet).
    return TaskManager(include_path=str(TASKS), include_defaults=False)


@pytest.fixture(scope="module")
def loaded(task_manager):
    return task_manager.load(list(TASK_NAMES))["tasks"]


def test_tasks_are_indexed(task_manager):
    assert set(TASK_NAMES) <= set(task_manager.all_tasks)
    # the shared config is not a task of its own
    assert not any("_general_ppl" in name for name in task_manager.all_tasks)


@pytest.mark.parametrize("task_name", sorted(TASK_NAMES))
def test_task_builds_rolling_requests(loaded, task_name):
    task = loaded[task_name]
    assert task.config.output_type == "loglikelihood_rolling"
    assert {m["metric"] for m in task.config.metric_list} == {
        "word_perplexity", "byte_perplexity", "bits_per_byte"}
    docs = list(task.test_docs())
    expected = _docs(TASK_NAMES[task_name])
    assert [d["text"] for d in docs] == [d["text"] for d in expected]
    for doc in docs:
        assert doc["culture"] == "none"
        assert doc["register"] in REGISTERS
        assert doc["source"] == TASK_NAMES[task_name]
        assert "===" not in doc["text"]

    task.build_all_requests(limit=None, rank=0, world_size=1)
    instances = task.instances
    assert len(instances) == len(docs)
    assert {inst.request_type for inst in instances} == {"loglikelihood_rolling"}
    assert sorted(inst.arguments[0] for inst in instances) == sorted(d["text"] for d in docs)


def test_metrics_end_to_end_with_a_fake_model(task_manager):
    from lm_eval import evaluator
    from lm_eval.api.model import LM

    class HalfNatPerByte(LM):
        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            return [-0.5 * len(r.arguments[0].encode("utf-8")) for r in requests]

    out = evaluator.simple_evaluate(model=HalfNatPerByte(), tasks=sorted(TASK_NAMES),
                                    task_manager=task_manager, log_samples=False)
    for task_name, source in TASK_NAMES.items():
        res = out["results"][task_name]
        assert res["byte_perplexity,none"] == pytest.approx(math.exp(0.5))
        assert res["bits_per_byte,none"] == pytest.approx(0.5 / math.log(2))
        docs = _docs(source)
        n_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
        n_words = sum(len(re.split(r"\s+", d["text"].strip())) for d in docs)
        assert res["word_perplexity,none"] == pytest.approx(math.exp(0.5 * n_bytes / n_words))


def test_startup_hook_points_default_task_manager_here():
    """The start-up hook adds task_dir() to every default TaskManager; it must be this tasks/ folder.

    (Building a default TaskManager indexes all of lm-eval's tasks, ~10 s, so only the folder the
    hook would add is checked here.)
    """
    if not (TASKS / "blend").is_dir():
        pytest.skip("the start-up hook locates tasks/ through tasks/blend, which is not there yet")
    from culnig_lm_eval._startup import task_dir

    assert task_dir().resolve() == TASKS.resolve()
    assert (task_dir() / "general_ppl" / "general_ppl.yaml").is_file()


def test_texts_found_relative_to_utils_in_wheel_layout(tmp_path):
    """In the wheel tasks/ becomes culnig_lm_eval/tasks/: the loader must read the files next to it."""
    from lm_eval.tasks import TaskManager

    target = tmp_path / "culnig_lm_eval" / "tasks" / "general_ppl"
    shutil.copytree(TASK_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    marker = "A tiny note appended only to the copied file."
    (target / "evaluation.txt").write_text(
        FILES["evaluation"].read_text(encoding="utf-8") + f"\n=== correspondence\n{marker}\n",
        encoding="utf-8")

    copied = _load_utils(target / "utils.py")
    assert copied.load_dataset(text_file="evaluation", version=1.0)["test"][-1]["text"] == marker

    tm = TaskManager(include_path=str(target.parent), include_defaults=False)
    task = tm.load(["general_ppl"])["tasks"]["general_ppl"]
    assert list(task.test_docs())[-1]["text"] == marker


# ---------------------------------------------------------------------------------------------
# The texts


@pytest.mark.parametrize("name", sorted(FILES))
def test_size_and_registers(name):
    docs = _docs(name)
    assert sum(len(d["text"].split()) for d in docs) >= 3000
    assert {d["register"] for d in docs} == REGISTERS
    for doc in docs:
        assert 150 <= len(doc["text"].split()) <= 400, doc["doc_id"]
    assert len({d["doc_id"] for d in docs}) == len(docs)


@pytest.mark.parametrize("name", sorted(FILES))
def test_plain_ascii_and_markers_well_formed(name):
    raw = FILES[name].read_text(encoding="utf-8")
    assert raw.isascii()
    markers = [line for line in raw.splitlines() if line.startswith("===")]
    assert len(markers) == len(_docs(name))
    assert raw.splitlines()[0].startswith("=== ")


def test_selection_and_evaluation_share_no_sentence():
    sel = set(_sentences("\n".join(d["text"] for d in _docs("selection"))))
    ev = set(_sentences("\n".join(d["text"] for d in _docs("evaluation"))))
    assert not sel & ev, sorted(sel & ev)


def test_selection_and_evaluation_share_no_8gram():
    n = 8

    def grams(name):
        words = _words("\n".join(d["text"] for d in _docs(name)))
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    shared = grams("selection") & grams("evaluation")
    assert not shared, [" ".join(g) for g in sorted(shared)[:10]]


@pytest.mark.parametrize("name", sorted(FILES))
def test_no_document_mentions_culture_words(name):
    offending = {d["doc_id"]: sorted(hits) for d in _docs(name) if (hits := culture_hits(d["text"]))}
    assert not offending


@pytest.mark.parametrize("name", sorted(FILES))
def test_no_proper_nouns_in_mid_sentence(name):
    offending = {d["doc_id"]: caps for d in _docs(name) if (caps := midsentence_capitals(d["text"]))}
    assert not offending


def test_culture_check_can_fail():
    assert culture_hits("We took the train to Paris and paid in euros.") == {"paris", "euros"}
    assert culture_hits("Her French neighbor cooked a curry.") == {"french", "curry"}
    assert culture_hits("A letter from New York arrived.") == {"new york"}
    assert culture_hits("The Canadians' cabin.") == {"canadian"}
    assert culture_hits("She will polish the new table in town.") == set()
    assert midsentence_capitals("Then we met Anna by the river. She waved.") == ["Anna"]
    assert midsentence_capitals('"Well," I said. Then the dog barked.') == []


def test_parser_rejects_malformed_files():
    with pytest.raises(ValueError, match="unknown register"):
        utils.parse_documents("=== poetry\nroses are red\n")
    with pytest.raises(ValueError, match="before the first"):
        utils.parse_documents("stray text\n=== narrative\nA story.\n")
    with pytest.raises(ValueError, match="empty document"):
        utils.parse_documents("=== narrative\n\n=== narrative\nA story.\n")
    docs = utils.parse_documents("=== narrative\n\nA story.\n\n=== explanation\nWhy.\n")
    assert docs == [{"text": "A story.", "register": "narrative"},
                    {"text": "Why.", "register": "explanation"}]


def test_a_text_file_that_is_not_utf8_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("### register: news\nCaf\xe9 prices rose.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not UTF-8 text \(byte 0xe9"):
        utils.load_documents(str(bad))
