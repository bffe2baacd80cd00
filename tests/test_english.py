"""Corpus ``english`` (pretraining text): the GCIDE parsing and cleaning on a small fixture, the held-out
rule, and, where Debian's dict-gcide is installed, the real dictionary."""

import gzip

import pytest

from attnkit.data import TEXT_CORPORA
from attnkit.data.english import (
    GCIDE_PATH,
    clean_gcide_entry,
    gcide_entries,
    gcide_paragraphs,
    held_out,
    split_paragraphs,
)

FIXTURE = """\
00-database-url
   ftp://ftp.gnu.org/gnu/gcide

00-database-info
   This file was converted from the original database.

The original data was distributed with the notice shown below.

Humanness \\Hu"man*ness\\, n.
   The quality or state of being human.
   [1913 Webster]

Ligniform \\Lig"ni*form\\ (l[i^]g"n[i^]*f[^o]rm), a. [L. {lignum}
   wood + -form.]
   Like wood; resembling wood.
   [1913 Webster]

         The wood is hard. --Gray.
   [1913 Webster]

1-dodecanol \\1-dodecanol\\ n.
   An insoluble solid alcohol ({C12H25OH}).

   Syn: lauryl alcohol
        [WordNet 1.5 +PJC]
"""


def test_entries_skip_the_header_and_the_notice():
    entries = list(gcide_entries(FIXTURE))
    assert [e[0].split(" ")[0] for e in entries] == ["Humanness", "Ligniform", "1-dodecanol"]


def test_cleaning_drops_tags_pronunciations_braces_and_wordnet_entries():
    humanness, ligniform, dodecanol = (clean_gcide_entry(e) for e in gcide_entries(FIXTURE))
    assert humanness == ["Humanness, n. The quality or state of being human."]
    assert ligniform == ['Ligniform (lig"ni*form), a. [L. lignum wood + -form.] Like wood; resembling wood.',
                         "The wood is hard. --Gray."]
    assert dodecanol == []  # taken from WordNet: its glosses are the WordNet tasks' inputs


def test_gcide_paragraphs_reads_the_gzipped_file(tmp_path):
    path = tmp_path / "gcide.dict.dz"
    path.write_bytes(gzip.compress(FIXTURE.encode()))
    assert gcide_paragraphs(path)[0] == "Humanness, n. The quality or state of being human."
    with pytest.raises(FileNotFoundError, match="dict-gcide"):
        gcide_paragraphs(tmp_path / "missing.dz")


def test_held_out_rule_is_a_fixed_five_percent():
    paragraphs = [f"paragraph number {i}" for i in range(20000)]
    train, held = split_paragraphs(paragraphs)
    assert 0.04 < len(held) / len(paragraphs) < 0.06
    assert all(held_out(p) for p in held) and not any(held_out(p) for p in train)
    assert split_paragraphs(reversed(paragraphs))[1] == held[::-1]  # by content, not position
    assert "english" in TEXT_CORPORA


@pytest.mark.skipif(not GCIDE_PATH.is_file(), reason="Debian dict-gcide is not installed (scripts/setup.sh)")
def test_real_dictionary():
    paragraphs = gcide_paragraphs()
    assert 230_000 < len(paragraphs) < 250_000  # 240,664 in dict-gcide 0.48
    assert "Humanness, n. The quality or state of being human." in paragraphs
    assert not any(p.startswith("1-dodecanol") for p in paragraphs)  # a WordNet entry
    assert not any("Webster]" in p or "WordNet 1.5" in p or "\\" in p for p in paragraphs)
