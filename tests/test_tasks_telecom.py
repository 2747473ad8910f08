"""The telecom term-relation task (the paper's 5G substitute) from FOLDOC and V.E.R.A.:
dictd parsing, .deb extraction, links, the answer cut from the context, unrelated pairs
without links, balance, term-disjointness and determinism — on small dictionaries written
here, and (slow) on the real Debian packages."""

import gzip
import hashlib
import io
import random
import re
import tarfile

import numpy as np
import pytest

from asyndbt_jax.llm.prompts import PAPER_TEMPLATES
from asyndbt_jax.tasks import data as datamod
from asyndbt_jax.tasks import telecom
from asyndbt_jax.tasks.splits import paper_split

DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(n: int) -> str:
    """dictd's base 64, written independently of the module."""
    out = ""
    while True:
        out = DIGITS[n % 64] + out
        n //= 64
        if n == 0:
            return out


def dictd(entries, extra_index=()):
    """``(index text, gzip body)`` of ``[(headwords, entry text)]``, the way dictfmt lays
    them out (lower-cased headwords, sorted index, one body)."""
    body, lines = b"", list(extra_index)
    for headwords, text in entries:
        data = text.encode()
        lines += [f"{h.lower()}\t{b64(len(body))}\t{b64(len(data))}" for h in headwords]
        body += data
    return "\n".join(sorted(lines)) + "\n", gzip.compress(body)


def words(text):
    return re.findall(r"\w+", text.lower())


def occurs(name, text):
    return re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", text.lower()) is not None


# ---------------------------------------------------------------------------- a tiny hand-made dictionary

FOLDOC_ENTRIES = [
    (["00-database-info"], "00-database-info\n     This file was converted by dictfmt.\n\n"),
    (["Global System for Mobile Communications", "GSM"],
     ("Global System for Mobile Communications\nGSM\n\n   <communications> (GSM) The digital {cellular}\n"
      "   telephone standard used in Europe, carrying voice and\n   {packets}.  See also {General Packet\n"
      "   Radio Service}.\n\n   (1999-01-01)\n\n")),
    (["General Packet Radio Service", "GPRS"],
     ("General Packet Radio Service\nGPRS\n\n   <communications> (GPRS) A {GSM} data transmission technique\n"
      "   that sends and receives data in {packets} over the air; gsm phones use it.\n\n"
      "   {(http://example.org/gprs)}.\n\n   (1999-09-12)\n\n")),
    (["packet"], "packet\n\n   <networking> A unit of data sent over a {network}.\n\n   (1996-01-01)\n\n"),
    (["cellular"], "cellular\n\n   <communications> A radio network made of cells, e.g.\n   {GSM}.\n\n"),
    (["network"], "network\n\n   <networking> Computers joined by {cables} or radio.\n\n"),
    (["UMTS"], "UMTS\n\n   {Universal Mobile Telecommunications System}\n\n"),
    (["Universal Mobile Telecommunications System"],
     ("Universal Mobile Telecommunications System\n\n   <communications> The third generation mobile system\n"
      "   after {GSM}.\n\n")),
    (["ABP"], "ABP\n\n   1. <networking> {Alternating bit protocol}.\n\n   2. <programming> A Basic Program.\n\n"),
    (["Alternating bit protocol"],
     "Alternating bit protocol\n\n   <protocol> A simple {network} protocol that resends lost\n   frames.\n\n"),
    (["compiler"], "compiler\n\n   <programming> A program that translates a {language}.\n\n"),
    (["ad"], "ad\n\n   <networking> The {country code} for Andorra.\n\n   (1999-01-26)\n\n"),
    (["modem"],
     ("modem\n\n   1. <hardware> A box that beeps.\n\n   2. <communications> A device that sends data\n"
      "   over a telephone line, see {network}.\n\n")),
]

VERA_ENTRIES = [
    (["00databaseinfo"], "The original data is available from:\n     http://example.org\n\n"),
    (["GPRS"],
     "GPRS\n       General Packet Radio Service / System (ETSI, GSM, TCP/IP, GPRS,\nmobile-systems)\n       \n"),
    (["HSDPA"], "HSDPA\n       High Speed Downlink Packet Access (UMTS, HSUPA, mobile-systems)\n       \n"),
    (["HSUPA"], "HSUPA\n       High Speed Uplink Packet Access (UMTS, mobile-systems)\n       \n"),
    (["TCPIP"],
     'TCPIP\n       Transmission Control Protocol / Internet Protocol (Internet, RFC 793), "TCP/IP"\n       \n'),
    (["AFAIK"], "AFAIK\n       As Far As I Know (slang, Usenet, IRC, mobile-systems)\n       \n"),
    (["BASIC"], "BASIC\n       Beginner's All-purpose Symbolic Instruction Code\n       \n"),
]


@pytest.fixture(scope="module")
def tiny():
    f_index, f_body = dictd(FOLDOC_ENTRIES)
    v_index, v_body = dictd(VERA_ENTRIES)
    foldoc = telecom.parse_foldoc(telecom.read_dictd(f_index, f_body))
    vera = telecom.parse_vera(telecom.read_dictd(v_index.encode(), v_body))
    return foldoc, vera


def test_dictd_numbers_and_index():
    assert telecom.b64_number("A") == 0 and telecom.b64_number("BA") == 64 and telecom.b64_number("/") == 63
    assert telecom.b64_number("Gb9L") == ((6 * 64 + 27) * 64 + 61) * 64 + 11
    for n in (0, 1, 63, 64, 4095, 4096, 5_578_809):
        assert telecom.b64_number(b64(n)) == n and telecom.b64_encode(n) == b64(n)
    with pytest.raises(ValueError, match="not a dictd base-64"):
        telecom.b64_number("A-B")
    # two headwords of one entry are one entry; plain (undecompressed) bodies work too
    index, body = dictd([(["Alpha", "ALF"], "Alpha\nALF\n\n   text one\n\n"), (["beta"], "beta\n\n   two\n\n")])
    entries = telecom.read_dictd(index, body)
    assert entries == [(("alf", "alpha"), "Alpha\nALF\n\n   text one\n\n"), (("beta",), "beta\n\n   two\n\n")]
    assert telecom.read_dictd(index, gzip.decompress(body)) == entries
    with pytest.raises(ValueError, match="line 1"):
        telecom.read_dictd("alpha\tA\n", body)
    with pytest.raises(ValueError, match="past the body"):
        telecom.read_dictd(f"alpha\tA\t{b64(10_000)}\n", body)


def test_parse_foldoc_categories_links_pointers(tiny):
    foldoc, _ = tiny
    by = {e.names[0]: e for e in foldoc}
    assert "00-database-info" not in by and len(foldoc) == len(FOLDOC_ENTRIES) - 1
    gprs = by["General Packet Radio Service"]
    assert gprs.names == ("General Packet Radio Service", "GPRS") and gprs.telecom
    assert gprs.categories == {"communications"} and gprs.alias_of is None
    assert gprs.links == ("GSM", "packets")  # the URL reference is no link
    gsm = by["Global System for Mobile Communications"]
    assert gsm.links == ("cellular", "packets", "General Packet Radio Service")
    assert by["UMTS"].alias_of == "Universal Mobile Telecommunications System" and not by["UMTS"].telecom
    assert by["ABP"].alias_of == "Alternating bit protocol" and by["ABP"].telecom  # a pointer sense
    assert not by["compiler"].telecom and by["compiler"].categories == {"programming"}
    assert not by["ad"].telecom  # a country code
    modem = by["modem"]  # only the telecom sense is kept
    assert modem.telecom and modem.categories == {"communications"} and "beeps" not in modem.text
    assert modem.links == ("network",)


def test_parse_vera_tags_and_telecom(tiny):
    _, vera = tiny
    by = {m.acronym: m for m in vera}
    assert "00databaseinfo" not in by and len(vera) == len(VERA_ENTRIES) - 1
    assert by["GPRS"].expansion == "General Packet Radio Service / System"
    assert by["GPRS"].tags == ("ETSI", "GSM", "TCP/IP", "GPRS", "mobile-systems") and by["GPRS"].telecom
    assert by["TCPIP"].spelled == "TCP/IP" and by["TCPIP"].tags == ("Internet", "RFC 793") and by["TCPIP"].telecom
    assert not by["AFAIK"].telecom  # chat slang, although tagged mobile-systems
    assert by["BASIC"].tags == () and not by["BASIC"].telecom
    assert by["BASIC"].expansion == "Beginner's All-purpose Symbolic Instruction Code"


def test_term_graph_merges_names_and_resolves_links(tiny):
    g = telecom.TermGraph(*tiny)
    node = g.node
    assert node["gprs"] == node["general packet radio service"]  # FOLDOC and V.E.R.A. GPRS are one term
    assert node["umts"] == node["universal mobile telecommunications system"]  # through the pointer entry
    assert node["abp"] == node["alternating bit protocol"]  # through the pointer sense
    assert node["tcpip"] == node["tcp/ip"]  # the quoted spelling
    assert g.term_of("packets") == node["packet"] and g.term_of("Cables") is None
    assert g.linked(node["gsm"], node["gprs"]) and g.linked(node["gprs"], node["gsm"])
    assert not g.linked(node["packet"], node["cellular"])
    related = {(c.source, c.word1, c.word2) for c in telecom.related_candidates(g)}
    assert related == {
        ("foldoc", "Global System for Mobile Communications", "cellular"),
        ("foldoc", "Global System for Mobile Communications", "packet"),
        ("foldoc", "Global System for Mobile Communications", "General Packet Radio Service"),
        ("foldoc", "General Packet Radio Service", "Global System for Mobile Communications"),
        ("foldoc", "General Packet Radio Service", "packet"),
        ("foldoc", "packet", "network"),
        ("foldoc", "cellular", "Global System for Mobile Communications"),
        ("foldoc", "Universal Mobile Telecommunications System", "Global System for Mobile Communications"),
        ("foldoc", "Alternating bit protocol", "network"),
        ("foldoc", "modem", "network"),
        # V.E.R.A.: tags that are telecom terms (not ETSI: no entry; not mobile-systems: a category)
        ("vera", "GPRS", "GSM"), ("vera", "GPRS", "TCP/IP"),
        ("vera", "HSDPA", "UMTS"), ("vera", "HSDPA", "HSUPA"), ("vera", "HSUPA", "UMTS"),
    }


def test_context_cuts_every_name_of_the_answer(tiny):
    foldoc, vera = tiny
    g = telecom.TermGraph(foldoc, vera)
    gprs = next(e for e in foldoc if e.names[0] == "General Packet Radio Service")
    gsm_names = g.names[g.node["gsm"]]
    assert gsm_names == {"Global System for Mobile Communications", "GSM"}
    text = telecom.foldoc_context(gprs, gsm_names, ("GSM",))
    assert "gsm" not in text.lower() and "http" not in text and "{" not in text and "<" not in text
    assert text.startswith("(GPRS) A data transmission technique that sends and receives data in packets")
    # the lower-case "gsm" is cut too; a V.E.R.A. tag naming the answer leaves the list
    hsdpa = next(m for m in vera if m.acronym == "HSDPA")
    assert telecom.vera_context(hsdpa, {"UMTS"}) == "High Speed Downlink Packet Access (HSUPA, mobile-systems)"
    assert telecom.vera_context(hsdpa, {"UMTS", "HSUPA", "mobile-systems"}) == "High Speed Downlink Packet Access"
    assert telecom.cut_names("Use the GSM, gsm and Gsm-R nets (GSM).", {"GSM"}) == "Use the, and -R nets."
    assert telecom.cut_names("Fast Ethernet or Ethernet", {"Fast Ethernet"}) == "or Ethernet"
    assert telecom.mentions("tcp/ip stacks", {"TCP/IP"}) and not telecom.mentions("TCP/IPv6", {"TCP/IP"})


def test_tiny_examples_have_no_leak_and_link_as_labelled(tiny):
    foldoc, vera = tiny
    records, stats = telecom.build_examples(foldoc, vera, seed=0)
    assert stats["related_pairs"] == {"foldoc": 10, "vera": 5}
    assert stats["positives"] == stats["negatives"] and len(records) == 2 * stats["positives"]
    g = telecom.TermGraph(foldoc, vera)
    for r in records:
        assert r["WORD2"].lower() not in r["TEXT"].lower() and r["cut"].lower() not in r["TEXT"].lower()
        assert g.linked(*r["terms"]) == (r["label"] == 1)


# ---------------------------------------------------------------------------- a larger generated dictionary


def generated(seed=0, n_foldoc=80, n_vera=70, degree=2):
    """Dictionaries with known links: FOLDOC ``Netterm<i>`` entries cross-referencing
    ``degree`` others, V.E.R.A. ``VQ<i>`` acronyms tagging ``degree`` others (and some
    noise: non-telecom entries, chat slang)."""
    rng = random.Random(seed)
    f_names = [f"Netterm{i}" for i in range(n_foldoc)]
    v_names = [f"VQ{i}" for i in range(n_vera)]
    links = set()
    f_entries = []
    for i, a in enumerate(f_names):
        targets = rng.sample([b for b in f_names if b != a], degree)
        links.update((a, b) for b in targets)
        category = ["networking", "communications", "protocol"][i % 3]
        refs = " and ".join("{" + t + "}" for t in targets)
        text = (f"{a}\n\n   <{category}> A {category} device that talks to {refs} over\n"
                "   copper wires.  It moves frames between hosts quickly and keeps\n"
                f"   state for every session it opens.\n\n   (2001-0{1 + i % 9}-01)\n\n")
        f_entries.append(([a], text))
    f_entries.append((["Lispy"], "Lispy\n\n   <language> A language, see {Netterm0}.\n\n"))
    v_entries = []
    for i, a in enumerate(v_names):
        targets = rng.sample([b for b in v_names if b != a], degree)
        links.update((a, b) for b in targets)
        tag = ["mobile-systems", "GSM", "ATM"][i % 3]
        v_entries.append(([a], f"{a}\n       Very Quick Service number {i} ({', '.join(targets)}, {tag})\n       \n"))
    v_entries.append((["LOL"], "LOL\n       Laughing Out Loud (slang, IRC, mobile-systems)\n       \n"))
    fi, fb = dictd(f_entries)
    vi, vb = dictd(v_entries)
    return (fi, fb, vi, vb), links


@pytest.fixture(scope="module")
def gen():
    (fi, fb, vi, vb), links = generated()
    foldoc = telecom.parse_foldoc(telecom.read_dictd(fi, fb))
    vera = telecom.parse_vera(telecom.read_dictd(vi, vb))
    records, stats = telecom.build_examples(foldoc, vera, seed=0)
    return foldoc, vera, records, stats, links


def test_generated_balance_and_labels_match_the_links(gen):
    _, _, records, stats, links = gen
    assert stats["related_pairs"] == {"foldoc": 160, "vera": 140}
    assert stats["telecom_terms"] == 150  # Lispy and LOL are no telecom terms
    labels = np.array([r["label"] for r in records])
    assert labels.sum() * 2 == len(labels) and len(labels) >= 40
    for source in ("foldoc", "vera"):
        per = [r["label"] for r in records if r["source"] == source]
        assert len(per) >= 10 and sum(per) * 2 == len(per)  # balanced per source
    for r in records:
        a, b = r["WORD1"], r["WORD2"]
        if r["label"] == 1:
            assert (a, b) in links
        else:  # no link either way, and the same kind of term
            assert (a, b) not in links and (b, a) not in links and a != b
            assert a[:2] == b[:2]
        assert set(r) == {"WORD1", "WORD2", "TEXT", "label", "source", "terms", "cut"}


def test_generated_contexts_cut_one_linked_term_in_both_classes(gen):
    _, _, records, _, links = gen
    for r in records:
        text = r["TEXT"]
        assert not occurs(r["WORD2"], text) and not occurs(r["cut"], text)
        assert (r["WORD1"], r["cut"]) in links  # a linked term of A was cut, whatever the label
        assert len(text.split()) >= 3 and "{" not in text and "(2001" not in text
        if r["source"] == "vera":
            # one of A's two tags was cut, the other stays
            assert re.fullmatch(r"Very Quick Service number \d+ \(VQ\d+, (mobile-systems|GSM|ATM)\)", text), text


def test_generated_terms_never_repeat_so_any_split_is_term_disjoint(gen):
    _, _, records, _, _ = gen
    terms = [t for r in records for t in r["terms"]]
    assert len(terms) == len(set(terms))
    words2 = [w for r in records for w in (r["WORD1"], r["WORD2"])]
    assert len(words2) == len(set(words2))


def test_build_is_deterministic_and_seeded():
    (fi, fb, vi, vb), _ = generated(seed=1, n_foldoc=40, n_vera=30)

    def build(seed):
        foldoc = telecom.parse_foldoc(telecom.read_dictd(fi, fb))
        vera = telecom.parse_vera(telecom.read_dictd(vi, vb))
        return telecom.build_examples(foldoc, vera, seed=seed)[0]

    first = build(0)
    assert build(0) == first
    assert build(5) != first


# ---------------------------------------------------------------------------- .deb files


def ar(members, bsd=False):
    out = b"!<arch>\n"
    for name, data in members:
        if bsd:
            header_name, data = f"#1/{len(name)}", name.encode() + data
        else:
            header_name = name + "/"
        out += f"{header_name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def tarball(files, mode="w:xz"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo("./" + path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def deb(files, mode="w:xz", suffix="xz"):
    return ar([("debian-binary", b"2.0\n"), ("control.tar.xz", tarball({"control": b"Package: x\n"})),
               (f"data.tar.{suffix}", tarball(files, mode))])


def test_ar_members_and_deb_files(tmp_path):
    members = [("debian-binary", b"2.0\n"), ("odd", b"abc"), ("after-odd", b"xy")]
    assert telecom.ar_members(ar(members)) == dict(members)
    assert telecom.ar_members(ar(members, bsd=True)) == dict(members)
    with pytest.raises(ValueError, match="not an ar archive"):
        telecom.ar_members(b"PK\x03\x04")
    with pytest.raises(ValueError, match="damaged"):
        telecom.ar_members(b"!<arch>\n" + b"x" * 70)
    files = {"usr/share/dictd/t.index": b"a\tA\tB\n", "usr/share/dictd/t.dict.dz": gzip.compress(b"a")}
    for mode, suffix in (("w:xz", "xz"), ("w:gz", "gz")):
        path = tmp_path / f"t-{suffix}.deb"
        path.write_bytes(deb(files, mode, suffix))
        assert telecom.deb_files(path, tuple(files)) == files
    with pytest.raises(ValueError, match="missing"):
        telecom.deb_files(path, ("usr/share/dictd/none",))


def test_fetch_deb_checks_the_sha256_and_reports_the_url(tmp_path, monkeypatch):
    payload = b"not the real package"
    pkg = telecom.DebPackage("dict-test", "1:1.0-1", "pool/main/t/test/dict-test_1.0-1_all.deb",
                             hashlib.sha256(payload).hexdigest(), ())
    (tmp_path / pkg.filename).write_bytes(payload)
    assert telecom.fetch_deb(pkg, tmp_path) == tmp_path / pkg.filename  # present: no network
    bad = telecom.DebPackage(pkg.name, pkg.version, pkg.pool_path, "0" * 64, ())
    with pytest.raises(ValueError, match="sha256"):
        telecom.fetch_deb(bad, tmp_path)
    assert not (tmp_path / pkg.filename).exists()
    monkeypatch.setattr(telecom, "_apt_download", lambda *a: False)
    monkeypatch.setattr(telecom, "MIRROR", "http://127.0.0.1:9/debian/")
    with pytest.raises(ConnectionError, match=r"dict-test 1:1\.0-1 from http://127\.0\.0\.1:9/debian/pool/main/t/test"):
        telecom.fetch_deb(pkg, tmp_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # no partial download left behind
    assert telecom.VERA.filename == "dict-vera_1.24-1_all.deb" and telecom.VERA.url.endswith("/pool/main/v/vera/" +
                                                                                            telecom.VERA.filename)


def test_prepare_offline_from_self_made_debs(tmp_cache, monkeypatch):
    """The whole route (fetch, extract, parse, build, write, read) on generated packages."""
    (fi, fb, vi, vb), _ = generated(seed=2)
    debs = {"dict-foldoc": deb({telecom.FOLDOC.members[0]: fi.encode(), telecom.FOLDOC.members[1]: fb}),
            "dict-vera": deb({telecom.VERA.members[0]: vi.encode(), telecom.VERA.members[1]: vb})}

    def fake_fetch(pkg, into, log=print):
        path = into / pkg.filename
        path.write_bytes(debs[pkg.name])
        return path

    monkeypatch.setattr(telecom, "fetch_deb", fake_fetch)
    logs = []
    data = datamod.prepare("telecom", log=logs.append)
    folder = datamod.data_dir("telecom")
    assert sorted(p.name for p in folder.iterdir()) == [".complete", "stats.json", "telecom.jsonl"]
    assert data.template is PAPER_TEMPLATES["5g"] and set(data.template.slots) == {"WORD1", "WORD2", "TEXT"}
    assert all(set(ex) == {"WORD1", "WORD2", "TEXT"} for ex in data.examples)
    assert data.class_counts()[0] == data.class_counts()[1] > 0
    assert any("related" in m for m in logs)
    monkeypatch.setattr(telecom, "fetch_deb", None)  # prepared: read from the cache only
    again = datamod.prepare("telecom", log=logs.append)
    assert again.examples == data.examples and np.array_equal(again.labels, data.labels)
    records = telecom.read_records(folder)
    assert [r["WORD2"] for r in records] == [ex["WORD2"] for ex in data.examples]
    prompt, queries = data.template.render([(data.examples[0], int(data.labels[0]))], ["w"], [data.examples[1]])
    assert prompt.startswith("In 5G network, whether") and queries[0].endswith("Answer:")


# ---------------------------------------------------------------------------- the real packages


@pytest.mark.slow
def test_prepare_the_real_task(tmp_cache):
    """Downloads dict-foldoc and dict-vera (2.7 MB), checks the pinned sha256s, builds the
    task and checks the measured counts, balance, leaks and term-disjointness."""
    data = datamod.prepare("telecom", log=lambda m: None)
    stats = __import__("json").loads((datamod.data_dir("telecom") / "stats.json").read_text())
    for name in ("foldoc_telecom_entries", "vera_telecom_meanings", "telecom_terms", "related_pairs",
                 "terms_in_related_pairs", "positives", "negatives"):
        assert stats[name] == telecom.MEASURED[name], name
    assert {s: stats["examples"][s]["kept_per_class"] for s in ("foldoc", "vera")} == telecom.MEASURED["per_class"]
    counts = data.class_counts()
    assert counts[0] == counts[1] == telecom.MEASURED["positives"] >= 170
    assert data.template is PAPER_TEMPLATES["5g"]
    records = telecom.read_records(datamod.data_dir("telecom"))
    terms = [t for r in records for t in r["terms"]]
    assert len(terms) == len(set(terms))
    for ex, r in zip(data.examples, records):
        assert set(ex) == {"WORD1", "WORD2", "TEXT"} and all(ex[s].strip() for s in ex)
        assert not occurs(ex["WORD2"], ex["TEXT"]) and not occurs(r["cut"], ex["TEXT"])
        assert "{" not in ex["TEXT"] and "://" not in ex["TEXT"] and len(ex["TEXT"].split()) <= 71
    split = paper_split(data, seed=0)  # the paper's sizes fit, and no term crosses the parts
    parts = [split.train, split.validation, split.candidates.ravel(), split.test]
    assert len(split.test) == 200 and not any("test has" in n for n in split.notes)
    seen = [{t for i in p for t in records[i]["terms"]} for p in parts]
    assert all(not (seen[i] & seen[j]) for i in range(4) for j in range(i + 1, 4))
