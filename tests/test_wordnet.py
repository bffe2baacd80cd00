"""attnkit.data.wordnet: the data-file parser on a small fixture, the cache, the sha1 held-out rule, the
two gloss tasks; and the real database (skipped when Debian wordnet-base is not installed)."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import pytest

from attnkit.data import (
    Synset,
    TextClassification,
    load_wordnet,
    parse_synset_line,
    split_synsets,
    synset_split,
    wordnet_lexname_task,
    wordnet_pos_task,
)
from attnkit.data.wordnet import LEXNAMES, read_data_file

WORDNET = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(
    not (WORDNET / "data.noun").is_file(), reason=f"{WORDNET} absent: apt-get install wordnet-base"
)

LICENCE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  By obtaining, using  \n"
    "  3   \n"
)
SIXTEEN = " ".join(f"w{i} {i % 16:x}" for i in range(16))  # w_cnt "10" is hex: 16 words
FIXTURE = {
    "noun": [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which is "
        "perceived or known or inferred to have its own distinct existence (living or nonliving)  ",
        "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 #m 02083863 n 0000 | "
        'a member of the genus Canis; "the dog barked all night"  ',
        f"03000000 06 n 10 {SIXTEEN} 000 | a made-up synset with sixteen words",
        "04000000 10 n 01 pipe_symbol 0 000 | the character | on a keyboard",  # " | " once more, in the gloss
    ],
    "verb": [
        "00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 002 $ 00002325 v 0000 @ 02108395 v 0000 "
        '02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "I can breathe better"  ',
    ],
    "adj": [
        "00013887 00 a 01 abundant 0 001 ! 00015247 a 0101 | present in great quantity  ",
        "00014358 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 | existing in abundance  ",
        "00070000 44 a 01 broken 0 000 | physically separated into pieces",
    ],
    "adv": [
        "00001740 02 r 01 a_cappella 0 000 | without musical accompaniment  ",
    ],
}


def write_fixture(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for pos, lines in FIXTURE.items():
        (folder / f"data.{pos}").write_text(LICENCE + "".join(line + "\n" for line in lines), encoding="utf-8")
    return folder


# --- the parser ----------------------------------------------------------------------------------

def test_parses_the_fixture(tmp_path):
    synsets = load_wordnet(write_fixture(tmp_path / "dict"), cache=tmp_path / "cache")
    assert [s.id for s in synsets] == [
        "00001740-n", "02084071-n", "03000000-n", "04000000-n", "00001740-v",
        "00013887-a", "00014358-a", "00070000-a", "00001740-r",
    ]
    by_id = {s.id: s for s in synsets}
    assert by_id["00001740-n"] == Synset(
        1740, "noun", "noun.Tops", ("entity",),
        "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)",
    )
    assert by_id["02084071-n"] == Synset(
        2084071, "noun", "noun.animal", ("dog", "domestic_dog", "Canis_familiaris"),
        'a member of the genus Canis; "the dog barked all night"',
    )
    assert by_id["03000000-n"].words == tuple(f"w{i}" for i in range(16))
    assert by_id["04000000-n"].gloss == "the character | on a keyboard"
    breathe = by_id["00001740-v"]  # pointers and verb frames are skipped
    assert breathe.words == ("breathe", "take_a_breath", "respire", "suspire") and breathe.lexname == "verb.body"
    satellite = by_id["00014358-a"]
    assert satellite.pos == "adj" and satellite.words == ("abounding", "galore")  # "(ip)" dropped
    assert by_id["00070000-a"].lexname == "adj.ppl"
    assert by_id["00001740-r"] == Synset(1740, "adv", "adv.all", ("a_cappella",), "without musical accompaniment")


def test_licence_and_blank_lines_are_not_synsets():
    assert parse_synset_line(LICENCE.splitlines()[0], "noun") is None
    assert parse_synset_line("", "noun") is None


@pytest.mark.parametrize(
    "line, pos, message",
    [
        ("00001740 03 v 01 entity 0 000 | x", "noun", "ss_type 'v'"),
        ("00001740 29 n 01 entity 0 000 | x", "noun", "lex_filenum 29"),
        ("00001740 03 n 02 entity 0 000 | x", "noun", "w_cnt 02"),
        ("00001740 03 n 01 entity 0 002 ~ 00001930 n 0000 | x", "noun", "p_cnt 002"),
        ("00001740 29 v 01 breathe 0 000 02 + 02 00 | x", "verb", "p_cnt 000"),  # one frame, two announced
    ],
)
def test_malformed_lines_are_refused(line, pos, message):
    with pytest.raises(ValueError, match=message):
        parse_synset_line(line, pos)


def test_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(LICENCE + "00001740 03 n 01 entity 0 001 | x\n")
    with pytest.raises(ValueError, match=r"data\.noun, line 4: p_cnt"):
        read_data_file(path, "noun")


def test_missing_files_name_the_path_and_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.noun not found: install the Debian package wordnet-base"):
        load_wordnet(tmp_path, cache=tmp_path / "cache")


def test_cache_is_read_back_and_renewed_when_the_files_change(tmp_path):
    folder, cache = write_fixture(tmp_path / "dict"), tmp_path / "cache"
    first = load_wordnet(folder, cache=cache)
    (cache_file,) = cache.glob("*.tsv")
    assert load_wordnet(folder, cache=cache) == first
    cache_file.write_text(cache_file.read_text().replace("without musical", "WITHOUT MUSICAL"))
    assert load_wordnet(folder, cache=cache)[-1].gloss == "WITHOUT MUSICAL accompaniment"  # read from the cache
    later = cache_file.stat().st_mtime + 3600
    os.utime(folder / "data.adv", (later, later))  # the package was updated: parse again
    assert load_wordnet(folder, cache=cache) == first
    assert len(list(cache.glob("*.tsv"))) == 2


# --- the held-out rule ---------------------------------------------------------------------------

def many_synsets(n: int = 4000) -> list[Synset]:
    return [Synset(1000 + 37 * i, ("noun", "verb", "adj", "adv")[i % 4], "adj.all", ("w",), f"gloss {i}")
            for i in range(n)]


def test_split_rule_is_sha1_of_the_synset_id():
    s = Synset(2084071, "noun", "noun.animal", ("dog",), "a dog")
    bucket = int(hashlib.sha1(b"02084071-n").hexdigest(), 16) % 10
    assert synset_split(s) == {0: "test", 1: "validation"}.get(bucket, "train")
    # the same offset in another part of speech is another synset
    assert Synset(2084071, "verb", "verb.body", ("dog",), "").id == "02084071-v"


def test_split_is_deterministic_disjoint_and_80_10_10():
    synsets = many_synsets()
    splits = split_synsets(synsets)
    assert split_synsets(synsets) == splits
    # fixed for good: these splits must not change between runs, machines or Python versions
    known = {(1930, "noun"): "test", (2137, "noun"): "validation", (1740, "adj"): "validation",
             (1740, "noun"): "train", (1740, "verb"): "train", (2084071, "noun"): "train"}
    assert {key: synset_split(Synset(*key, "adj.all", ("w",), "")) for key in known} == known
    reordered = split_synsets(reversed(synsets))  # a synset's split does not depend on the others
    assert all(reordered[name] == part[::-1] for name, part in splits.items())
    ids = {name: {s.id for s in part} for name, part in splits.items()}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert sum(len(part) for part in splits.values()) == len(synsets)
    for name, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
        assert abs(len(splits[name]) / len(synsets) - share) < 0.02, (name, len(splits[name]))
    assert all(synset_split(s) == name for name, part in splits.items() for s in part)


# --- the tasks -----------------------------------------------------------------------------------

def test_task_builders_label_part_of_speech_and_lexicographer_file(tmp_path):
    synsets = load_wordnet(write_fixture(tmp_path / "dict"), cache=tmp_path / "cache")
    pos, lex = wordnet_pos_task(synsets), wordnet_lexname_task(synsets)
    assert set(pos) == set(lex) == {"train", "validation", "test"}
    assert pos["train"].label_names == ("noun", "verb", "adj", "adv")
    assert len(lex["train"].label_names) == 45 and lex["train"].label_names == LEXNAMES
    by_gloss_pos, by_gloss_lex = {}, {}
    for name in pos:
        assert isinstance(pos[name], TextClassification) and pos[name].texts == lex[name].texts
        by_gloss_pos.update(zip(pos[name].texts, pos[name].labels))
        by_gloss_lex.update(zip(lex[name].texts, lex[name].labels))
    assert len(by_gloss_pos) == len(synsets)
    assert by_gloss_pos["existing in abundance"] == 2  # a satellite is an adjective
    assert by_gloss_pos["without musical accompaniment"] == 3
    assert by_gloss_lex['a member of the genus Canis; "the dog barked all night"'] == 5  # noun.animal is file 05
    assert by_gloss_lex["physically separated into pieces"] == 44  # adj.ppl
    assert by_gloss_lex['draw air into, and expel out of, the lungs; "I can breathe better"'] == 29  # verb.body


def test_lexnames_follow_the_man_page_numbering():
    assert len(LEXNAMES) == len(set(LEXNAMES)) == 45
    assert LEXNAMES[:4] == ("adj.all", "adj.pert", "adv.all", "noun.Tops")
    assert LEXNAMES.index("noun.time") == 28 and LEXNAMES.index("verb.body") == 29
    assert LEXNAMES[43:] == ("verb.weather", "adj.ppl")


# --- the real database ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_synsets(tmp_path_factory):
    return load_wordnet(WORDNET, cache=tmp_path_factory.mktemp("wordnet_cache"))


@needs_wordnet
def test_real_database_counts(real_synsets):
    assert len(real_synsets) == 117_659
    assert Counter(s.pos for s in real_synsets) == {"noun": 82_115, "verb": 13_767, "adj": 18_156, "adv": 3_621}
    assert len({s.lexname for s in real_synsets}) == 45
    sizes = {name: len(part) for name, part in split_synsets(real_synsets).items()}
    assert abs(sizes["test"] / len(real_synsets) - 0.1) < 0.005, sizes


@needs_wordnet
def test_real_database_known_synsets(real_synsets):
    by_id = {s.id: s for s in real_synsets}
    dog = by_id["02084071-n"]
    assert dog.words == ("dog", "domestic_dog", "Canis_familiaris") and dog.lexname == "noun.animal"
    assert dog.gloss.startswith("a member of the genus Canis (probably descended from the common wolf)")
    assert by_id["00001740-n"].words == ("entity",) and by_id["00001740-n"].lexname == "noun.Tops"
    assert by_id["00001740-v"].words[0] == "breathe" and by_id["00001740-v"].lexname == "verb.body"
    assert by_id["00001740-r"].gloss == 'without musical accompaniment; "they performed a cappella"'
    galore = by_id["00014358-a"]  # a satellite, with the marker "(ip)" in the file
    assert galore.words == ("abounding", "galore") and galore.lexname == "adj.all"
