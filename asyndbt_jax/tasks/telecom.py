"""The telecom term-relation task: the paper's 5G task rebuilt from two real dictionaries.

The paper asks "In 5G network, whether [WORD1] related to [WORD2]? Some contextual
information: [TEXT]." over 3GPP terms; the 3GPP data is not public, so this task
asks the same question about telecom terms of two free dictionaries shipped by Debian
(positives: A's definition cross-references B, or B is in A's V.E.R.A. tag list):

* FOLDOC (``dict-foldoc`` 20230119-1): definitions whose ``{cross-references}`` name
  other entries;
* V.E.R.A. (``dict-vera`` 1:1.24-1): acronym expansions with a tag list, e.g.
  ``HSDPA  High Speed Downlink Packet Access (UMTS, HSUPA, mobile-systems)``.

**Telecom entry.** A FOLDOC entry is telecom when one of its senses carries the subject
category ``<networking>``, ``<protocol>`` or ``<communications>`` (only those senses are
used: their text is the context, their cross-references the links), except the 241
country-code domains (``ad``: "The {country code} for Andorra": a country name, no telecom
term). A V.E.R.A. meaning is telecom when its tag list names one of
:data:`VERA_TELECOM_TAGS` (mobile systems, telecom standards bodies, mobile/wired/transport
networks and their protocols, compared case-insensitively) or an ``RFC`` (an Internet
protocol, V.E.R.A.'s analogue of FOLDOC's ``<protocol>``), and none of
:data:`VERA_CHAT_TAGS` (chat slang such as ``AFAIK`` is tagged ``mobile-systems`` for SMS
but is no telecom term).

**Terms.** A term is a node of a name graph: every FOLDOC entry's headwords (plus those of
the pointer entries and pointer senses that lead to it, e.g. ``UMTS`` → ``Universal Mobile
Telecommunications System``, ``ABP`` "1. <networking> {Alternating bit protocol}.") and
every V.E.R.A. acronym (plus its quoted spelling, e.g. ``TCPIP`` / ``TCP/IP``) are one
node, and nodes sharing a name (case-insensitively) are merged, so FOLDOC's ``GPRS`` and
V.E.R.A.'s ``GPRS`` are one term. A term is telecom when one of its FOLDOC entries or
V.E.R.A. meanings is.

**Related (label 1, "Yes").** ``(A, B)``, two different telecom terms, where

* (``foldoc``) a telecom sense of A's FOLDOC entry cross-references B's telecom FOLDOC
  entry (``{B}``, resolved through the index, a plural ``s``/``es``/``ies`` and pointer
  entries), or
* (``vera``) a telecom meaning of A lists B in its V.E.R.A. tag list and B is a telecom
  term (B a V.E.R.A. acronym or a FOLDOC headword; category tags like ``mobile-systems``
  are no terms).

**Unrelated (label 0, "No"), the harder kind.** Two telecom terms of the same source that
share a tag (a FOLDOC category; a V.E.R.A. telecom tag, e.g. both ``GSM``) and have no link
at all: no cross-reference and no tag-list mention in either direction, in either
dictionary, between any of their names, and no name of either in the other's text.

**Context.** ``TEXT`` is A's text with the link removed: the telecom senses of A's FOLDOC
definition (categories, dates, URLs and braces dropped; its first sentences: 25 words
where it has them, at most 70) or A's V.E.R.A. expansion with its tag list. Every name of B (each headword, each
cross-reference spelling, the acronym) is cut out of it, whole word, case-insensitively,
so the answer never leaks: no example's ``WORD2`` occurs in its ``TEXT`` as a word. So
that the cut itself says nothing about the label, an unrelated example has exactly one
other linked term of A (a cross-reference or a term tag, chosen at random) cut the same
way: in both classes one linked term is missing from the context. Pairs where one term's
name is a word of the other's (``Fast Ethernet`` / ``Ethernet``), or where a name of the
cut term occurs in A's text as an ordinary lower-case word (``IN`` / ``in``), are left
out in both classes.

**Disjoint terms, whatever the split.** :func:`asyndbt_jax.tasks.splits.paper_split`
draws examples per class at random, so the examples themselves are built such that no
term occurs in two examples: every term (node above) is WORD1 or WORD2 of at most one
example. Any split of the examples into train/validation/candidates/test is therefore
term-disjoint (guaranteed, and tested). Not guaranteed: a term may still be *mentioned*
in another example's context, and two different terms may be near-synonyms the name
graph does not merge (``ISDN`` / ``Euro-ISDN``).

**Choosing the pairs.** The terms that take part in some related pair are visited in a
random order (seed 0); a free term opens an example of the (source, class) with the fewest
examples so far: with a random free related partner, or with a free same-tag unrelated
partner (never more unrelated than related ones of a source, so terms stay free for
related pairs, the scarce kind). Both classes thus draw on the same terms, in the same
roles: in an unrelated pair, as in a related one, WORD1 is a term that cross-references
(or tags) some telecom term and WORD2 one that some telecom term cross-references; a term
takes the WORD1 role with odds (how often it cites) : (how often it is cited), and its
partner is drawn with weight = how often it is cited (resp. cites), counted over the
related pairs of its source. The medians then agree (WORD1 cites 2 terms, WORD2 is
cited by 2, in both classes); what
remains is recorded in ``stats.json``: the heaviest hubs still show up more as related
WORD2 (cited 7.5 vs 3.8 times on average: a hub is linked to most of its same-tag terms,
so it seldom has an unrelated partner), and a related context is a little longer (FOLDOC
30.8 vs 29.8 words, V.E.R.A. 5.7 vs 4.9: a referring text tends to be a longer one).

**Balance.** The spec fixes the paper's per-class draws (10 train, 10 validation, 50
candidates per class; 200 balanced test examples), so the task is exactly balanced: as
many related as unrelated examples, and per source too (``foldoc`` and ``vera`` contexts
look different; equal shares per class keep the source from giving the label away).

**Measured** on the pinned packages (:data:`MEASURED`; a prepared task's ``stats.json``):
1036 telecom FOLDOC entries, 1586 telecom V.E.R.A. meanings, 2338 telecom terms; 2484
FOLDOC and 2019 V.E.R.A. related pairs (an earlier count of 1838 + 1222 came from a
narrower, unrecorded definition); 2089 terms in some related pair; 262 related (149 FOLDOC, 113
V.E.R.A.) and 262 unrelated examples: enough for the paper's 70 per class plus a
200-example test set.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._files import atomic_file
from ..llm.prompts import PAPER_TEMPLATES
from .data import BUILT, Builder, LabelledData, _sha256

# ---------------------------------------------------------------------------- fetching

MIRROR = "http://deb.debian.org/debian/"


@dataclass(frozen=True)
class DebPackage:
    """A pinned Debian package and the files taken from it."""

    name: str
    version: str  # as apt takes it (with the epoch)
    pool_path: str  # path under the mirror (no epoch in the file name)
    sha256: str
    members: tuple  # paths inside the package's data tarball

    @property
    def filename(self) -> str:
        return self.pool_path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return MIRROR + self.pool_path


FOLDOC = DebPackage(
    name="dict-foldoc",
    version="20230119-1",
    pool_path="pool/main/d/dict-foldoc/dict-foldoc_20230119-1_all.deb",
    sha256="745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3",
    members=("usr/share/dictd/foldoc.index", "usr/share/dictd/foldoc.dict.dz"),
)
VERA = DebPackage(
    name="dict-vera",
    version="1:1.24-1",
    pool_path="pool/main/v/vera/dict-vera_1.24-1_all.deb",  # source package "vera"
    sha256="11d2bf94c326761131a7707807e66a05e65bc984d1a351fd8ca1cd77ac8ee8db",
    members=("usr/share/dictd/vera.index", "usr/share/dictd/vera.dict.dz"),
)


def _apt_download(pkg: DebPackage, into: Path, log) -> bool:
    """``apt-get download name=version`` into ``into``; True when the file arrived."""
    if shutil.which("apt-get") is None:
        return False
    log(f"fetching {pkg.name}={pkg.version} with apt-get download")
    try:
        done = subprocess.run(["apt-get", "download", "-q", f"{pkg.name}={pkg.version}"], cwd=into,
                              capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    # apt names the file with the epoch escaped (dict-vera_1%3a1.24-1_all.deb)
    got = sorted(into.glob(f"{pkg.name}_*.deb"))
    if done.returncode != 0 or not got:
        log(f"apt-get download {pkg.name}={pkg.version} failed; trying the Debian pool")
        return False
    got[0].replace(into / pkg.filename)
    return True


def _url_download(pkg: DebPackage, into: Path, log) -> None:
    log(f"fetching {pkg.url}")
    try:
        with (atomic_file(into / pkg.filename) as partial, urllib.request.urlopen(pkg.url, timeout=60) as response,
              open(partial, "wb") as out):
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as err:
        raise ConnectionError(f"could not download {pkg.name} {pkg.version} from {pkg.url}: {err}") from None


def fetch_deb(pkg: DebPackage, into: Path, log=print) -> Path:
    """The pinned ``.deb`` of ``pkg`` in ``into`` (fetched unless there), sha256-checked.

    Uses ``apt-get download`` when apt-get exists and knows the version, else the file
    from the Debian pool over HTTP (urllib).

    Raises:
      ConnectionError: neither route could fetch it (the message names package and URL).
      ValueError: the checksum differs (the file is removed).
    """
    into = Path(into)
    target = into / pkg.filename
    if not target.exists() and not _apt_download(pkg, into, log):
        _url_download(pkg, into, log)
    digest = _sha256(target)
    if digest != pkg.sha256:
        target.unlink()
        raise ValueError(f"{pkg.filename}: sha256 {digest} is not the expected {pkg.sha256} (file removed)")
    return target


def ar_members(data: bytes) -> dict[str, bytes]:
    """The members of a Unix ``ar`` archive (a ``.deb``): name -> bytes.

    Format: ``!<arch>\\n``, then per member a 60-byte header (name 16, mtime 12, uid 6,
    gid 6, mode 8, size 10, magic ``\\x60\\n``) and the data, padded to an even length.
    GNU names end in ``/``; BSD long names (``#1/N``) keep the name in the first N bytes.

    Raises:
      ValueError: not an ar archive, or a damaged header.
    """
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (no '!<arch>' magic)")
    members, pos = {}, 8
    while pos < len(data):
        if data[pos:pos + 1] == b"\n":  # padding
            pos += 1
            continue
        header = data[pos:pos + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise ValueError(f"damaged ar member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").rstrip()
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise ValueError(f"damaged ar member size at byte {pos}") from None
        body = data[pos + 60:pos + 60 + size]
        if len(body) < size:
            raise ValueError(f"ar member {name!r} is truncated")
        if name.startswith("#1/"):
            n = int(name[3:])
            name, body = body[:n].decode("utf-8").rstrip("\0"), body[n:]
        members[name.rstrip("/")] = body
        pos += 60 + size + (size & 1)
    return members


def _open_data_tar(deb: Path, name: str, blob: bytes) -> tarfile.TarFile:
    if name.endswith(".zst"):
        for module in ("compression.zstd", "zstandard"):  # Python >= 3.14; the PyPI package
            try:
                zstd = __import__(module, fromlist=["_"])
            except ImportError:
                continue
            raw = zstd.decompress(blob) if module == "compression.zstd" else \
                zstd.ZstdDecompressor().stream_reader(io.BytesIO(blob)).read()
            return tarfile.open(fileobj=io.BytesIO(raw))
        if shutil.which("dpkg-deb"):
            raw = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
            return tarfile.open(fileobj=io.BytesIO(raw))
        raise RuntimeError(f"{deb.name} holds {name} (zstd): this Python cannot read zstd and dpkg-deb is missing; "
                           "pip install zstandard")
    return tarfile.open(fileobj=io.BytesIO(blob))  # gz, xz, bz2, plain: tarfile detects them


def deb_files(deb: Path, members) -> dict[str, bytes]:
    """The named files (``usr/share/...``) of a ``.deb``'s data tarball, in pure Python.

    Raises:
      ValueError: the package has no data tarball or lacks one of ``members``.
    """
    parts = ar_members(Path(deb).read_bytes())
    data = [n for n in parts if n.startswith("data.tar")]
    if not data:
        raise ValueError(f"{deb}: no data.tar.* member (has {sorted(parts)})")
    wanted = {m.removeprefix("./").lstrip("/"): m for m in members}
    found = {}
    with _open_data_tar(Path(deb), data[0], parts[data[0]]) as tar:
        for info in tar:
            path = info.name.removeprefix("./").lstrip("/")
            if path in wanted and info.isfile():
                found[wanted[path]] = tar.extractfile(info).read()
    missing = [m for m in members if m not in found]
    if missing:
        raise ValueError(f"{deb}: missing {missing}")
    return found


# ---------------------------------------------------------------------------- dictd

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def b64_number(text: str) -> int:
    """A dictd index number (offset or length): base 64, most significant digit first."""
    if not text:
        raise ValueError("empty dictd number")
    n = 0
    for c in text:
        if c not in _B64:
            raise ValueError(f"{text!r} is not a dictd base-64 number")
        n = n * 64 + _B64[c]
    return n


def b64_encode(n: int) -> str:
    """Inverse of :func:`b64_number` (for writing small dictionaries)."""
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = digits[n % 64]
    while n >= 64:
        n //= 64
        out = digits[n % 64] + out
    return out


def read_dictd(index: bytes | str, body: bytes) -> list[tuple[tuple[str, ...], str]]:
    """The entries of a dictd database: ``(index headwords, entry text)``, one per distinct
    ``(offset, length)`` in index order (several headwords may share one entry).

    Args:
      index: the ``.index`` file (lines ``headword\\toffset\\tlength``).
      body: the ``.dict`` text, or the ``.dict.dz`` (gzip/dictzip) bytes.

    Raises:
      ValueError: a malformed index line or an entry past the end of the body.
    """
    if isinstance(index, bytes):
        index = index.decode("utf-8")
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    entries: dict[tuple[int, int], list[str]] = {}
    for i, line in enumerate(index.splitlines()):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"dictd index line {i + 1} is not 'headword<TAB>offset<TAB>length': {line!r}")
        offset, length = b64_number(parts[1]), b64_number(parts[2])
        if offset + length > len(body):
            raise ValueError(f"dictd index line {i + 1}: entry {offset}+{length} past the body's {len(body)} bytes")
        entries.setdefault((offset, length), []).append(parts[0])
    return [(tuple(hw), body[o:o + n].decode("utf-8", "replace")) for (o, n), hw in entries.items()]


def _is_meta(headwords) -> bool:
    return all(h.replace("-", "").startswith("00database") for h in headwords)


def key(name: str) -> str:
    """The comparison form of a name: whitespace collapsed, case folded."""
    return " ".join(name.split()).casefold()


# ---------------------------------------------------------------------------- FOLDOC

FOLDOC_TELECOM = frozenset({"networking", "protocol", "communications"})

_CATEGORY = re.compile(r"^\s*(?:\d+\.\s*)?<([^<>\n]+)>")
_SENSE = re.compile(r"^\s*(\d+)\.\s")
_LINK = re.compile(r"\{([^{}]+)\}")
_DATE = re.compile(r"\(\d{4}-\d\d-\d\d\)")


@dataclass(frozen=True)
class FoldocEntry:
    """One FOLDOC entry.

    Attributes:
      names: its headwords as written, the main one first.
      categories: the subject categories of its telecom senses (all senses' when none is).
      telecom: whether a sense is ``<networking>``, ``<protocol>`` or ``<communications>``.
      text: the raw text of its telecom senses (of every sense when none is telecom).
      links: the cross-references ``{...}`` in ``text``, whitespace collapsed.
      alias_of: the target of a pure pointer entry (``{Universal Mobile ...}``), else None.
    """

    names: tuple
    categories: frozenset
    telecom: bool
    text: str
    links: tuple
    alias_of: str | None


def _is_link(surface: str) -> bool:
    s = surface.strip()
    return bool(s) and not s.startswith("(") and "://" not in s and not s.lower().startswith(("news:", "mailto:"))


def _display_names(head: str, headwords) -> tuple:
    flat = " ".join(head.split())
    low = flat.lower()
    found = []
    for h in headwords:
        hk = " ".join(h.split()).lower()
        at = low.find(hk)
        found.append((at if at >= 0 else len(low), flat[at:at + len(hk)] if at >= 0 else h))
    found.sort(key=lambda p: p[0])
    return tuple(dict.fromkeys(name for _, name in found))


def _pointer(sense: str) -> str | None:
    """The target of a sense that only points elsewhere (``1. <networking> {Alternating bit
    protocol}.``), else None."""
    body = _DATE.sub("", sense)
    body = re.sub(r"^\s*(?:\d+\.\s*)?(?:<[^<>\n]+>)?", "", body).strip().rstrip(".").strip()
    m = _LINK.fullmatch(body)
    return " ".join(m.group(1).split()) if m else None


def parse_foldoc(entries) -> list[FoldocEntry]:
    """FOLDOC entries from :func:`read_dictd` output (the database's own 00-entries dropped).

    An entry's text is ``headword lines``, a blank line, then the definition; a definition
    may have numbered senses (``1. <networking> ...``), each with its own categories.
    """
    out = []
    for headwords, raw in entries:
        if _is_meta(headwords):
            continue
        head, _, definition = raw.partition("\n\n")
        names = _display_names(head, headwords)
        senses: list[list] = [[set(), []]]  # [categories, paragraphs]
        for para in re.split(r"\n\s*\n", definition):
            if not para.strip():
                continue
            if _SENSE.match(para) and len(senses[-1][1]) > 0:
                senses.append([set(), []])
            m = _CATEGORY.match(para)
            if m and not senses[-1][1]:
                senses[-1][0].update(c.strip().lower() for c in m.group(1).split(",") if c.strip())
            senses[-1][1].append(para)
        telecom_senses = [s for s in senses if s[0] & FOLDOC_TELECOM]
        used = telecom_senses or senses
        text = "\n\n".join(p for s in used for p in s[1])
        categories = frozenset(c for s in used for c in s[0])
        links = tuple(" ".join(m.split()) for m in _LINK.findall(text) if _is_link(m))
        pointers = [_pointer("\n\n".join(s[1])) for s in used]
        alias = pointers[0] if pointers and all(pointers) else None
        if telecom_senses and re.search(r"\{country\s+code\}\s+for\b", text):
            telecom_senses = []  # "ad: The {country code} for Andorra": a country, no telecom term
        out.append(FoldocEntry(names, categories, bool(telecom_senses), text, links, alias))
    return out


# ---------------------------------------------------------------------------- V.E.R.A.

#: V.E.R.A. tags that make a meaning a telecom term (compared case-insensitively): mobile
#: systems and telecom bodies, mobile and wired telecom networks, data networks and the
#: network protocols (mirroring FOLDOC's communications / networking / protocol).
VERA_TELECOM_TAGS = frozenset(t.casefold() for t in (
    "mobile-systems", "telecommunication", "network",
    "ETSI", "ITU", "ITU-T", "CCITT", "3GPP", "IETF",
    "GSM", "GPRS", "EDGE", "EGPRS", "UMTS", "HSDPA", "HSUPA", "LTE", "3G", "CDMA", "WCDMA", "WAP", "SMS",
    "IN", "SS7", "PSTN", "PLMN", "MSC", "BSS", "WIMAX", "Bluetooth", "WLAN", "HiperLAN/2", "DECT", "RAN",
    "ISDN", "MS-ISDN", "ATM", "UNI", "SONET", "SDH", "FDDI", "Token Ring", "DQDB", "DSL", "ADSL", "MODEM",
    "X.25", "X.21", "Frame Relay", "T1", "DS1", "DS3/E3", "DOCSIS", "DVB",
    "LAN", "WAN", "MAN", "ethernet", "OSI", "TCP/IP", "TCP", "IP", "UDP", "PPP", "Multicast", "VoIP", "SIP",
    "MANET", "ISP", "SNA", "ARPANET", "IPX", "SNMP", "QOS", "MAC",
))
#: V.E.R.A. tags of chat slang, which is not telecom even when tagged mobile-systems.
VERA_CHAT_TAGS = frozenset({"irc", "usenet", "slang"})

_VERA_TAIL = re.compile(r'^(?P<exp>.*?)\s*(?:\((?P<tags>[^()]*)\))?\s*(?:,\s*"?(?P<spelled>[^",()]*)"?)?\s*$')


@dataclass(frozen=True)
class VeraMeaning:
    """One V.E.R.A. meaning of an acronym.

    Attributes:
      acronym: the acronym as written (``HSDPA``).
      spelled: its quoted spelling when given (``"TCP/IP"`` for ``TCPIP``), else None.
      expansion: the expansion without the tag list (``High Speed Downlink Packet Access``).
      tags: the tag list (``("UMTS", "HSUPA", "mobile-systems")``).
      telecom: whether the meaning is a telecom term (see the module doc).
    """

    acronym: str
    spelled: str | None
    expansion: str
    tags: tuple
    telecom: bool


def vera_is_telecom(tags) -> bool:
    folded = {t.casefold() for t in tags}
    if folded & VERA_CHAT_TAGS:
        return False
    return bool(folded & VERA_TELECOM_TAGS) or any(re.match(r"rfc\b", t) for t in folded)


def parse_vera(entries) -> list[VeraMeaning]:
    """V.E.R.A. meanings from :func:`read_dictd` output: first line the acronym, then the
    expansion, an optional ``(tag, tag, ...)`` list and an optional quoted spelling."""
    out = []
    for headwords, raw in entries:
        if _is_meta(headwords):
            continue
        lines = raw.strip("\n").split("\n")
        acronym = lines[0].strip()
        rest = " ".join(" ".join(lines[1:]).split())
        if not acronym or not rest:
            continue
        m = _VERA_TAIL.match(rest)
        expansion, tags, spelled = rest, (), None
        if m and m.group("exp"):
            expansion = m.group("exp").rstrip(" ,")
            tags = tuple(t.strip() for t in (m.group("tags") or "").split(",") if t.strip())
            spelled = (m.group("spelled") or "").strip() or None
        out.append(VeraMeaning(acronym, spelled, expansion, tags, vera_is_telecom(tags)))
    return out


# ---------------------------------------------------------------------------- terms


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # deterministic representative


class TermGraph:
    """Terms (merged names), their telecom flags, names, and every link between them."""

    def __init__(self, foldoc: list[FoldocEntry], vera: list[VeraMeaning]):
        self.foldoc, self.vera = foldoc, vera
        uf = _UnionFind()
        self.foldoc_by_key: dict[str, int] = {}
        for i, e in enumerate(foldoc):
            for n in e.names:
                self.foldoc_by_key.setdefault(key(n), i)
        self.vera_keys = set()
        for e in foldoc:
            for n in e.names:
                uf.union(key(e.names[0]), key(n))
        for i, e in enumerate(foldoc):  # pointer entries join their target
            if e.alias_of is not None:
                target = self.resolve_foldoc(e.alias_of)
                if target is not None:
                    uf.union(key(e.names[0]), key(foldoc[target].names[0]))
        for m in vera:
            self.vera_keys.add(key(m.acronym))
            uf.find(key(m.acronym))
            if m.spelled:
                self.vera_keys.add(key(m.spelled))
                uf.union(key(m.acronym), key(m.spelled))
        self.node = {k: uf.find(k) for k in uf.parent}
        self.names: dict[str, set] = defaultdict(set)
        for e in foldoc:
            self.names[self.node[key(e.names[0])]].update(e.names)
        for m in vera:
            self.names[self.node[key(m.acronym)]].update([m.acronym] + ([m.spelled] if m.spelled else []))
        self.telecom: set = set()
        for e in foldoc:
            if e.telecom:
                self.telecom.add(self.node[key(e.names[0])])
        for m in vera:
            if m.telecom:
                self.telecom.add(self.node[key(m.acronym)])
        # every link, telecom or not, both dictionaries, as undirected node pairs
        self.edges: set = set()
        for e in foldoc:
            a = self.node[key(e.names[0])]
            for s in e.links:
                b = self.term_of(s)
                if b is not None and b != a:
                    self.edges.add(frozenset((a, b)))
        for m in vera:
            a = self.node[key(m.acronym)]
            for t in m.tags:
                b = self.term_of(t)
                if b is not None and b != a:
                    self.edges.add(frozenset((a, b)))

    def resolve_foldoc(self, surface: str, _depth: int = 0) -> int | None:
        """The FOLDOC entry a cross-reference names (index name, then a plural stripped,
        then through pointer entries), or None."""
        k = key(surface)
        variants = [k]
        if k.endswith("ies"):
            variants.append(k[:-3] + "y")
        if k.endswith("es"):
            variants.append(k[:-2])
        if k.endswith("s"):
            variants.append(k[:-1])
        for v in variants:
            if v in self.foldoc_by_key:
                i = self.foldoc_by_key[v]
                target = self.foldoc[i].alias_of
                if target is not None and _depth < 3:
                    j = self.resolve_foldoc(target, _depth + 1)
                    return i if j is None else j
                return i
        return None

    def term_of(self, surface: str) -> str | None:
        """The term (node) a name or cross-reference names, or None when it is no entry."""
        k = key(surface)
        if k in self.vera_keys or k in self.foldoc_by_key:
            return self.node[k]
        i = self.resolve_foldoc(surface)
        return None if i is None else self.node[key(self.foldoc[i].names[0])]

    def linked(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self.edges


# ---------------------------------------------------------------------------- contexts

MIN_WORDS, MAX_WORDS = 25, 70


def _word_pattern(names) -> re.Pattern | None:
    names = sorted({" ".join(n.split()) for n in names if n and n.strip()}, key=len, reverse=True)
    if not names:
        return None
    alts = "|".join(r"\s+".join(re.escape(w) for w in n.split()) for n in names)
    return re.compile(rf"(?<![\w]){'(?:' + alts + ')'}(?![\w])", re.IGNORECASE)


def mentions(text: str, names) -> bool:
    """Whether any of ``names`` occurs in ``text`` as a whole word, case-insensitively."""
    pat = _word_pattern(names)
    return bool(pat and pat.search(text))


def _ordinary_word_clash(text: str, names) -> bool:
    """A name that is not lower-case itself occurs in ``text`` in lower case (``IN``/``in``)."""
    for n in names:
        if n != n.lower():
            pat = _word_pattern([n])
            if pat and any(m.group(0) == m.group(0).lower() for m in pat.finditer(text)):
                return True
    return False


def _tidy(text: str) -> str:
    text = " ".join(text.split())
    for _ in range(3):
        text = re.sub(r"\(\s*[,;]?\s*\)|\[\s*[,;]?\s*\]", "", text)
        text = re.sub(r"\(\s*[,;]\s*", "(", text)
        text = re.sub(r"\s*[,;]\s*\)", ")", text)
        text = re.sub(r"([,;])\s*(?:[,;]\s*)+", r"\1 ", text)
        text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
        text = re.sub(r"\(\s+", "(", text)
        text = re.sub(r"(?i)\b(?:see also|see|e\.g\.|i\.e\.)[:,]?\s*(?=[.;)]|$)", "", text)
        text = re.sub(r"[,;:]\s*([.)])", r"\1", text)
        text = re.sub(r"(?<!\.)\.\s*\.(?!\.)", ".", text)
        text = re.sub(r"(^|[.:;]\s*)[,;.:]\s*", r"\1", text)
        text = re.sub(r"\s{2,}", " ", text).strip()
    return text


def cut_names(text: str, names) -> str:
    """``text`` with every whole-word, case-insensitive occurrence of ``names`` removed
    (and the punctuation left dangling by the cut tidied)."""
    pat = _word_pattern(names)
    return _tidy(pat.sub("", text) if pat else text)


def _first_sentences(text: str) -> str:
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])", text)
    out, words = [], 0
    for s in sentences:
        n = len(s.split())
        if out and words + n > MAX_WORDS:
            break
        out.append(s)
        words += n
        if words >= MIN_WORDS:
            break
    joined = " ".join(out).split()
    return " ".join(joined[:MAX_WORDS]) + (" ..." if len(joined) > MAX_WORDS else "")


def foldoc_context(entry: FoldocEntry, cut: set, cut_surfaces=()) -> str:
    """The context of a FOLDOC term: its telecom senses cleaned (categories, dates, URLs,
    braces dropped), with the cross-references ``cut_surfaces`` and every name in ``cut``
    removed, first sentences only."""
    text = _DATE.sub("", entry.text)
    text = _CATEGORY.sub("", text)
    text = re.sub(r"(?m)^\s*<[^<>\n]+>\s*", "", text)
    text = re.sub(r"<[A-Za-z][A-Za-z ,/-]*>", "", text)  # "(IVR) <communications> A ..."
    text = re.sub(r"(?m)^\s*(\d+)\.\s+<[^<>\n]+>", r"\1.", text)
    text = re.sub(r"(?m)^\s*\d+\.\s+", "", text)
    text = re.sub(r"\{[^{}]*://[^{}]*\}", "", text)  # {(http://...)}, {"Title" (http://...)}
    text = re.sub(r"\{(?:news|mailto):[^{}]*\}", "", text)
    text = re.sub(r"\(?(?:https?|ftp)://\S+", "", text)
    text = re.sub(r"(?im)^.*\b(?:Usenet newsgroups?|Home|E-?mail|Mailing list|FAQ)\b:.*$", "", text)
    cut_keys = {key(s) for s in cut_surfaces}
    text = _LINK.sub(lambda m: "" if key(m.group(1)) in cut_keys else m.group(1), text)
    text = _tidy(text)
    text = cut_names(text, cut)
    return _first_sentences(text)


def vera_context(meaning: VeraMeaning, cut: set) -> str:
    """The context of a V.E.R.A. term: the expansion and its tag list, names in ``cut``
    removed (a tag that is such a name is dropped from the list)."""
    folded = {key(n) for n in cut}
    tags = [t for t in meaning.tags if key(t) not in folded]
    text = meaning.expansion + (f" ({', '.join(tags)})" if tags else "")
    return cut_names(text, cut)


# ---------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Candidate:
    source: str  # "foldoc" or "vera"
    a: str  # term (node) of WORD1
    b: str  # term of WORD2
    provider: int  # index of A's FOLDOC entry or V.E.R.A. meaning (the context)
    word1: str
    word2: str
    surfaces: tuple  # A's cross-reference spellings of B (foldoc)


def related_candidates(graph: TermGraph) -> list[Candidate]:
    """Every related telecom pair (one per source, A, B), in a deterministic order."""
    out: dict[tuple, Candidate] = {}
    for i, e in enumerate(graph.foldoc):
        if not e.telecom or e.alias_of is not None:
            continue
        a = graph.node[key(e.names[0])]
        by_target: dict[int, list] = defaultdict(list)
        for s in e.links:
            j = graph.resolve_foldoc(s)
            if j is not None and graph.foldoc[j].telecom:
                by_target[j].append(s)
        for j, surfaces in by_target.items():
            b = graph.node[key(graph.foldoc[j].names[0])]
            if b != a and ("foldoc", a, b) not in out:
                out[("foldoc", a, b)] = Candidate("foldoc", a, b, i, e.names[0], graph.foldoc[j].names[0],
                                                  tuple(dict.fromkeys(surfaces)))
    for i, m in enumerate(graph.vera):
        if not m.telecom:
            continue
        a = graph.node[key(m.acronym)]
        for t in m.tags:
            b = graph.term_of(t)
            if b is None or b == a or b not in graph.telecom or ("vera", a, b) in out:
                continue
            out[("vera", a, b)] = Candidate("vera", a, b, i, m.spelled or m.acronym, t, (t,))
    return list(out.values())


def _overlapping_names(graph: TermGraph, a: str, b: str) -> bool:
    na, nb = graph.names[a], graph.names[b]
    return any(mentions(x, nb) for x in na) or any(mentions(y, na) for y in nb)


def _raw_text(graph: TermGraph, c: Candidate) -> str:
    if c.source == "foldoc":
        return _LINK.sub(lambda m: m.group(1), graph.foldoc[c.provider].text)
    m = graph.vera[c.provider]
    return m.expansion + " " + " ".join(m.tags)


def _example(graph: TermGraph, c: Candidate, cut_term: str, cut_surfaces, label: int) -> dict | None:
    """The example of candidate ``c`` with term ``cut_term`` cut from A's context, or None
    when the pair is left out (a name clash, an empty context, a leak)."""
    cut = set(graph.names[cut_term]) | set(cut_surfaces)
    names_b = set(graph.names[c.b]) | {c.word2}
    raw = _raw_text(graph, c)
    if _ordinary_word_clash(raw, cut) or _overlapping_names(graph, c.a, c.b):
        return None
    if c.source == "foldoc":
        text = foldoc_context(graph.foldoc[c.provider], cut, cut_surfaces)
    else:
        text = vera_context(graph.vera[c.provider], cut)
    if len(text.split()) < 3 or mentions(text, names_b) or mentions(text, cut):
        return None
    shown = list(cut_surfaces) or sorted(graph.names[cut_term])
    return {"WORD1": c.word1, "WORD2": c.word2, "TEXT": text, "label": label, "source": c.source,
            "terms": [c.a, c.b], "cut": shown[0]}


def _links_of(graph: TermGraph, source: str, provider: int, a: str) -> dict[str, tuple]:
    """A's linked terms in its own context: term -> the spellings naming it there."""
    out: dict[str, list] = defaultdict(list)
    if source == "foldoc":
        for s in graph.foldoc[provider].links:
            t = graph.term_of(s)
            if t is not None and t != a:
                out[t].append(s)
    else:
        for s in graph.vera[provider].tags:
            t = graph.term_of(s)
            if t is not None and t != a:
                out[t].append(s)
    return {t: tuple(dict.fromkeys(v)) for t, v in out.items()}


def _telecom_tags(source: str, item) -> frozenset:
    """The tags an unrelated pair must share: FOLDOC telecom categories, V.E.R.A. telecom tags."""
    if source == "foldoc":
        return frozenset(item.categories & FOLDOC_TELECOM)
    return frozenset(t.casefold() for t in item.tags
                     if t.casefold() in VERA_TELECOM_TAGS or re.match(r"rfc\b", t.casefold()))


def build_examples(foldoc: list[FoldocEntry], vera: list[VeraMeaning], *, seed: int = 0,
                   tries: int = 40) -> tuple[list[dict], dict]:
    """The task's examples and the counts behind them (see the module doc for the rules).

    Terms that take part in some related pair are visited in a random order; a free term
    joins the (source, class) that has the fewest examples so far and could take it: a
    random free related partner, or a free same-tag unrelated partner drawn so that its
    role (WORD1/WORD2) and weight follow the related pairs (module doc). Each term thus
    ends in at most one example and the two classes draw on the same terms.

    Returns:
      ``(records, stats)``: records are dicts with ``WORD1``, ``WORD2``, ``TEXT``, ``label``
      (1 related), ``source``, ``terms`` (the two term ids) and ``cut`` (a name cut from the
      context), shuffled; each term occurs in at most one record; the classes are equal in
      size overall and per source. ``stats``: entry, term and pair counts.
    """
    rng = np.random.default_rng(seed)
    graph = TermGraph(foldoc, vera)
    related = related_candidates(graph)
    sources = ("foldoc", "vera")
    stats = {
        "foldoc_entries": len(foldoc),
        "foldoc_telecom_entries": sum(e.telecom and e.alias_of is None for e in foldoc),
        "vera_meanings": len(vera),
        "vera_telecom_meanings": sum(m.telecom for m in vera),
        "telecom_terms": len(graph.telecom),
        "related_pairs": {s: sum(c.source == s for c in related) for s in sources},
    }
    involved = sorted({t for c in related for t in (c.a, c.b)})
    stats["terms_in_related_pairs"] = len(involved)
    in_pairs = set(involved)
    related_of: dict[str, list] = defaultdict(list)
    for c in related:
        related_of[c.a].append(c)
        related_of[c.b].append(c)
    # the telecom entries/meanings of each term, per source: (index, shared-tag set, word)
    items: dict[str, dict] = {s: defaultdict(list) for s in sources}
    for i, e in enumerate(foldoc):
        if e.telecom and e.alias_of is None:
            items["foldoc"][graph.node[key(e.names[0])]].append((i, _telecom_tags("foldoc", e), e.names[0]))
    for i, m in enumerate(vera):
        if m.telecom:
            items["vera"][graph.node[key(m.acronym)]].append((i, _telecom_tags("vera", m), m.spelled or m.acronym))
    by_tag: dict[str, dict] = {s: defaultdict(list) for s in sources}
    for s in sources:
        for term in sorted(items[s]):
            if term in in_pairs:
                for _, tags, _ in items[s][term]:
                    for t in tags:
                        if not by_tag[s][t] or by_tag[s][t][-1] != term:
                            by_tag[s][t].append(term)
    # roles in unrelated pairs follow the related ones: a term opens an unrelated example
    # (WORD1) as often, relative to closing one (WORD2), as it cites others in related pairs
    # relative to being cited (+1 each), and its partner is drawn by the same weights, so
    # that well-known terms (Internet, TCP/IP) are no mark of the related class
    cites, cited = defaultdict(int), defaultdict(int)
    for c in related:
        cites[(c.source, c.a)] += 1
        cited[(c.source, c.b)] += 1
    weights = {s: {t: {"a": np.cumsum([float(cites[(s, m)]) for m in members]),
                       "b": np.cumsum([float(cited[(s, m)]) for m in members])}
                   for t, members in by_tag[s].items()} for s in sources}
    used: set = set()
    made: dict = {(s, label): [] for s in sources for label in (0, 1)}

    def related_example(x, source):
        options = [c for c in related_of[x] if c.source == source and c.a not in used and c.b not in used]
        for k in rng.permutation(len(options)):
            c = options[k]
            ex = _example(graph, c, c.b, c.surfaces, 1)
            if ex is not None:
                return ex
        return None

    def unrelated_example(x, source):
        tags = sorted({t for _, ts, _ in items[source].get(x, ()) for t in ts})
        if not tags or cites[(source, x)] + cited[(source, x)] == 0:
            return None
        for _ in range(tries):
            tag = tags[rng.integers(len(tags))]
            opens = rng.random() * (cites[(source, x)] + cited[(source, x)]) < cites[(source, x)]
            cum = weights[source][tag]["b" if opens else "a"]
            if cum[-1] == 0:
                continue
            y = by_tag[source][tag][min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")),
                                        len(cum) - 1)]
            if y == x or y in used or graph.linked(x, y):
                continue
            a, b = (x, y) if opens else (y, x)
            pa, _, word1 = items[source][a][rng.integers(len(items[source][a]))]
            links = _links_of(graph, source, pa, a)
            links.pop(b, None)
            if not links:
                continue
            word2 = items[source][b][0][2]
            cand = Candidate(source, a, b, pa, word1, word2, ())
            if mentions(_raw_text(graph, cand), set(graph.names[b]) | {word2}) or any(
                    mentions(_raw_text(graph, Candidate(source, b, a, pb, "", "", ())), graph.names[a])
                    for pb, _, _ in items[source][b]):
                continue  # no mention either way
            choices = sorted(links)
            cut_term = choices[rng.integers(len(choices))]
            ex = _example(graph, cand, cut_term, links[cut_term], 0)
            if ex is not None:
                return ex
        return None

    for k in rng.permutation(len(involved)):
        x = involved[k]
        if x in used:
            continue
        slots = sorted(made, key=lambda sl: (len(made[sl]), rng.random()))
        for source, label in slots:
            if x not in items[source] and not any(c.source == source for c in related_of[x]):
                continue
            if label == 0 and len(made[(source, 0)]) > len(made[(source, 1)]):
                continue  # a term that finds no related partner stays free for a later one
            ex = related_example(x, source) if label == 1 else unrelated_example(x, source)
            if ex is not None:
                made[(source, label)].append(ex)
                used.update(ex["terms"])
                break
    records, final = [], {}
    for source in sources:
        pos, neg = made[(source, 1)], made[(source, 0)]
        n = min(len(pos), len(neg))
        records += [pos[i] for i in sorted(rng.permutation(len(pos))[:n])]
        records += [neg[i] for i in sorted(rng.permutation(len(neg))[:n])]
        final[source] = {"made_related": len(pos), "made_unrelated": len(neg), "kept_per_class": n}
    records = [records[i] for i in rng.permutation(len(records))]
    stats["examples"] = final
    stats["positives"] = sum(r["label"] == 1 for r in records)
    stats["negatives"] = sum(r["label"] == 0 for r in records)
    # the cues that could tell the classes apart, for the record
    for label, name in ((1, "related"), (0, "unrelated")):
        rows = [r for r in records if r["label"] == label]
        stats[f"{name}_mean_text_words"] = {
            s: round(float(np.mean([len(r["TEXT"].split()) for r in rows if r["source"] == s] or [0])), 2)
            for s in sources}
        stats[f"{name}_mean_word1_cites"] = round(float(np.mean(
            [cites[(r["source"], r["terms"][0])] for r in rows] or [0])), 2)
        stats[f"{name}_mean_word2_cited"] = round(float(np.mean(
            [cited[(r["source"], r["terms"][1])] for r in rows] or [0])), 2)
    return records, stats


# ---------------------------------------------------------------------------- the task

DATA_FILE = "telecom.jsonl"
STATS_FILE = "stats.json"

#: Counts measured on the pinned packages (FOLDOC 20230119-1, V.E.R.A. 1.24), seed 0.
MEASURED: dict = {
    "foldoc_telecom_entries": 1036, "vera_telecom_meanings": 1586, "telecom_terms": 2338,
    "related_pairs": {"foldoc": 2484, "vera": 2019}, "terms_in_related_pairs": 2089,
    "positives": 262, "negatives": 262, "per_class": {"foldoc": 149, "vera": 113},
}


def read_records(folder: Path) -> list[dict]:
    """Every record of a prepared task folder (with ``source``, ``terms`` and ``cut``)."""
    with open(Path(folder) / DATA_FILE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class TelecomBuilder(Builder):
    """Builds ``telecom`` from ``dict-foldoc`` and ``dict-vera`` (see the module doc)."""

    package = f"{FOLDOC.name}={FOLDOC.version}, {VERA.name}={VERA.version} (Debian)"

    def build(self, folder: Path, log=print) -> None:
        folder = Path(folder)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            files = {}
            for pkg in (FOLDOC, VERA):
                files.update(deb_files(fetch_deb(pkg, Path(tmp), log), pkg.members))
        foldoc = parse_foldoc(read_dictd(files[FOLDOC.members[0]], files[FOLDOC.members[1]]))
        vera = parse_vera(read_dictd(files[VERA.members[0]], files[VERA.members[1]]))
        records, stats = build_examples(foldoc, vera)
        write_records(folder, records, stats)
        log(f"telecom: {stats['positives']} related / {stats['negatives']} unrelated examples "
            f"(related pairs found: {stats['related_pairs']})")

    def read(self, task: str, folder: Path) -> LabelledData:
        records = read_records(folder)
        slots = PAPER_TEMPLATES["5g"].slots
        examples = [{s: r[s] for s in slots} for r in records]
        labels = np.array([r["label"] for r in records], np.int64)
        source = (f"Debian {FOLDOC.name} {FOLDOC.version} (foldoc.index/.dict.dz) + {VERA.name} {VERA.version} "
                  "(vera.index/.dict.dz): cross-references and tag lists of telecom terms")
        return LabelledData(task, examples, labels, PAPER_TEMPLATES["5g"], source)


def write_records(folder: Path, records: list[dict], stats: dict) -> None:
    """Write ``telecom.jsonl`` (one record a line) and ``stats.json`` into ``folder``."""
    with open(Path(folder) / DATA_FILE, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    (Path(folder) / STATS_FILE).write_text(json.dumps(stats, indent=1, sort_keys=True))


BUILT["telecom"] = TelecomBuilder()
