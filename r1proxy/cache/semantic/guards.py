"""The rules a semantic candidate must pass before it is served; each is named and returns a reason.

``check(new, source, similarity, threshold)`` runs them in order and returns the first refusal:
``cosine`` (similarity >= threshold), ``hard_tokens`` (the same numbers with units, paths,
identifiers, quoted strings, flags, URLs and named technologies on both sides), ``polarity``
(the same negation count, the same values in every contrast set of ``lexicon.CONTRASTS``, no
"used"/"unused" prefix antonyms) and ``direction`` ("from A to B" is not "from B to A"). Words
of one polarity are synonyms ("remove" = "delete"), so a reworded verb is no flip. Pure functions,
no numpy: the text features are regular expressions over the two texts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

from r1proxy.cache.semantic.lexicon import (
    CONTRASTS,
    NAMED,
    NEGATING_PREFIXES,
    NEGATIONS,
    NUMBER_WORDS,
    ORDINALS,
    UNITS,
    UNITS_AFTER_NUMBER_ONLY,
    VERB_SETS,
)

RULES = ("cosine", "hard_tokens", "polarity", "direction")


@dataclass(frozen=True, slots=True)
class Verdict:
    """``ok`` or the first rule that refused, with a short reason for logs and tests."""

    ok: bool
    rule: str = ""
    reason: str = ""


_URL = re.compile(r"\bhttps?://[^\s)\]>\"'`]+")
_QUOTED = re.compile(r"\"([^\"\n]{1,200})\"|(?<![\w])'([^'\n]{1,200})'(?![\w])|`([^`\n]{1,200})`|“([^”\n]{1,200})”")
_FLAG = re.compile(r"(?<![\w/.-])(--?[A-Za-z][\w-]*(?:=\S+)?)")
_PATH = re.compile(r"(?<![\w/.~-])((?:~|\.{1,2})?(?:[\w.@-]*[/\\])+[\w.@*-]*"
                   r"|[\w-]+(?:\.[\w-]+)*\.[A-Za-z][\w]{0,7})(?![\w/])")
_NUMBER = re.compile(r"(?<![\w.])([-+]?(?:0x[0-9a-fA-F]+|\d+(?:,\d{3})*(?:\.\d+)*(?:e[-+]?\d+)?))"
                     r"(?:\s?(%|[A-Za-z°µ$€£]+))?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CALL = re.compile(r"\b([A-Za-z_][\w.]*)\s*\(")
_NUMBER_WORD = re.compile(r"\b(?:" + "|".join(NUMBER_WORDS) + r")\b", re.I)
_NOT_PATHS = frozenset({"e.g", "i.e", "etc", "vs", "a.m", "p.m"})
_WORDS = re.compile(r"[a-z0-9][a-z0-9'+#-]*[a-z0-9+#]|[a-z0-9]")


def _norm_number(s: str) -> str:
    s = s.replace(",", "")
    if s.count(".") > 1:
        return s  # a version such as 1.2.3
    try:
        if s.lower().startswith(("0x", "-0x", "+0x")):
            return str(int(s, 16))
        f = float(s)
        return str(int(f)) if f == int(f) and "e" not in s.lower() else repr(f)
    except ValueError:
        return s


def _is_identifier(w: str) -> bool:
    if len(w) < 2:
        return False
    if "_" in w.strip("_") or w.startswith("__"):
        return True
    if any(c.isdigit() for c in w) and any(c.isalpha() for c in w):
        return True
    # camelCase / PascalCase: a lower-case letter followed by an upper-case one
    return any(a.islower() and b.isupper() for a, b in itertools.pairwise(w))


@lru_cache(maxsize=4096)
def hard_tokens(text: str) -> frozenset[str]:
    """What must be identical on both sides: tagged tokens such as ``n:10``, ``u:ms``, ``p:cli.py``."""
    out: set[str] = set()
    # number words become digits first, so "three times" = "3 times" (number and unit)
    text = _NUMBER_WORD.sub(lambda m: NUMBER_WORDS[m.group(0).lower()], text)
    rest = text
    for m in _URL.finditer(text):
        out.add("url:" + m.group(0).rstrip(".,;:"))
    rest = _URL.sub(" ", rest)
    for m in _QUOTED.finditer(rest):
        q = next(g for g in m.groups() if g is not None)
        if any(c.isspace() for c in q.strip()):
            out.add("q:" + q)
    for m in _FLAG.finditer(rest):
        out.add("f:" + m.group(1))
    rest = _FLAG.sub(" ", rest)
    for m in _PATH.finditer(rest):
        p = m.group(1).rstrip(".")
        if p.lower() in _NOT_PATHS or not p or p in {"/", "\\"} or re.fullmatch(r"[\d.,]+", p):
            continue
        if "/" in p or "\\" in p or "." in p:
            out.add("p:" + p)
    rest = _PATH.sub(" ", rest)
    for m in _CALL.finditer(rest):
        if "." in m.group(1) or _is_identifier(m.group(1)) or len(m.group(1)) > 1:
            out.add("id:" + m.group(1))
    for m in _NUMBER.finditer(rest):
        out.add("n:" + _norm_number(m.group(1)))
        unit = (m.group(2) or "").lower()
        if unit in UNITS:
            out.add("u:" + UNITS[unit])
    for w in _WORD.findall(rest):
        lw = w.lower()
        if _is_identifier(w):
            out.add("id:" + w)
        elif lw in ORDINALS and lw != "second":
            out.add("o:" + ORDINALS[lw])
        elif lw in UNITS and lw not in UNITS_AFTER_NUMBER_ONLY:
            out.add("u:" + UNITS[lw])
        if lw in NAMED:
            out.add("t:" + NAMED[lw])
    for m in re.finditer(r"\b(\d+)(st|nd|rd|th)\b", rest):
        out.add("o:" + m.group(1))
    for name in ("c++", "c#", "utf-8", "sha-256", "http/2", "kebab-case", "latin-1"):
        if name in text.lower():
            out.add("t:" + NAMED[name])
    return frozenset(out)


_PHRASES: dict[str, tuple[str, str]] = {}
_SINGLE: dict[str, list[tuple[str, str]]] = {}
for _set, _values in CONTRASTS.items():
    for _value, _words in _values.items():
        for _w in _words:
            if " " in _w:
                _PHRASES[_w] = (_set, _value)
            else:
                _SINGLE.setdefault(_w, []).append((_set, _value))
_NEG_PHRASE_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in NEGATIONS if " " in p) + r")\b")
_PHRASE_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in sorted(_PHRASES, key=len, reverse=True)) + r")\b")


def _prose(text: str) -> str:
    """``text`` without its code-like spans (URLs, flags, paths, identifiers, backticks): their words
    ("fetch_user_name", "os.path.join") are names, not verbs."""
    text = _URL.sub(" ", text)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = _FLAG.sub(" ", text)
    text = _PATH.sub(lambda m: " " if ("/" in m.group(1) or "." in m.group(1).strip(".")) else m.group(0), text)
    return _WORD.sub(lambda m: " " if _is_identifier(m.group(0)) else m.group(0), text)


@lru_cache(maxsize=4096)
def polarity_features(text: str) -> tuple[tuple[str, ...], frozenset[tuple[str, str]], frozenset[str]]:
    """(negation classes, one per occurrence, sorted; {(contrast set, value)}; the words) of ``text``, lower-cased."""
    low = _prose(text).lower().replace("’", "'")
    low = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", low)  # "read-only" = "read only"
    feats: set[tuple[str, str]] = set()
    for m in _PHRASE_RE.finditer(low):
        feats.add(_PHRASES[m.group(1)])
    low_rest = _PHRASE_RE.sub(" ", low)
    words = _WORDS.findall(low_rest)
    negations = [NEGATIONS[p] for p in _NEG_PHRASE_RE.findall(low)]
    for w in words:
        if w in NEGATIONS:
            negations.append(NEGATIONS[w])
        elif w.endswith("n't"):
            negations.append("not")
        for f in _SINGLE.get(w, ()):
            feats.add(f)
    return tuple(sorted(negations)), frozenset(feats), frozenset(_WORDS.findall(low))


def _prefix_antonym(a: frozenset[str], b: frozenset[str]) -> str:
    for x, y in ((a, b), (b, a)):
        for w in x - y:
            for p in NEGATING_PREFIXES:
                if w.startswith(p) and len(w) - len(p) >= 3 and w[len(p):] in y:
                    return f"{w!r} vs {w[len(p):]!r}"
    return ""


def _contrast_diff(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> set[tuple[str, str]]:
    """Contrast values that make the two texts ask different things (see ``lexicon.VERB_SETS``)."""
    out: set[tuple[str, str]] = set()
    for name in {s for s, _ in a | b}:
        va = {v for s, v in a if s == name}
        vb = {v for s, v in b if s == name}
        if va == vb:
            continue
        if name in VERB_SETS and (not va or not vb) and (va | vb) == {"+"}:
            continue  # the plain verb left out on one side
        out |= {(name, v) for v in va ^ vb}
    return out


def rule_cosine(similarity: float, threshold: float) -> str:
    return "" if similarity >= threshold else f"similarity {similarity:.4f} < {threshold:.4f}"


def rule_hard_tokens(new: str, source: str) -> str:
    a, b = hard_tokens(new), hard_tokens(source)
    if a == b:
        return ""
    wa, wb = polarity_features(new)[2], polarity_features(source)[2]
    # a flag on one side matches its bare name on the other: "--verbose flag" = "verbose option"
    diff = [t for t in sorted(a ^ b)
            if not (t.startswith("f:--") and t[4:].lower() in (wb if t in a else wa))]
    return "differ: " + ", ".join(diff[:6]) if diff else ""


def rule_polarity(new: str, source: str) -> str:
    na, fa, wa = polarity_features(new)
    nb, fb, wb = polarity_features(source)
    if na != nb:
        return f"negations {', '.join(na) or '-'} vs {', '.join(nb) or '-'}"
    diff = sorted(f"{s}{v}" for s, v in _contrast_diff(fa, fb))
    if diff:
        return "contrast " + ", ".join(diff[:6])
    anti = _prefix_antonym(wa, wb)
    return f"prefix antonym {anti}" if anti else ""


# relation words, each with the relation it states and whether it states it backwards
# ("B from A" = "A to B", "B after A" = "A before B", "B rather than A" = "A instead of B" reversed)
_RELATIONS = {"to": ("to", False), "into": ("to", False), "until": ("to", False), "till": ("to", False),
              "->": ("to", False), "→": ("to", False), "=>": ("to", False), "from": ("to", True),
              "with": ("with", False), "by": ("with", False), "instead": ("instead", False),
              "rather": ("instead", False), "over": ("instead", False), "than": ("than", False),
              "before": ("before", False), "after": ("before", True), "for": ("for", False)}
_SKIP_AFTER = {"instead": "of", "rather": "than"}
_STOP = frozenset({"the", "a", "an", "it", "this", "that", "these", "those", "them", "is", "are", "be", "and", "or",
                   "of", "in", "on", "at", "me", "my", "our", "so", "as", "please", "all", "every", "each", "its",
                   "their", "then", "when", "if", "which", "who", "can", "you", "i", "we", "should", "will"})
_TOKEN = re.compile(r"->|→|=>|[\w./#+:@-]*\w[#+]*|[,;:!?()]|\.(?=\s|$)")
_WINDOW = 3


@lru_cache(maxsize=4096)
def relations(text: str) -> frozenset[tuple[str, str, str]]:
    """(relation, left, right) for every relation word and the content words up to 3 either side of
    it within a clause: "replace print calls with logging" holds ("with", "print", "logging")."""
    tokens = _TOKEN.findall(text.lower())
    clauses: list[list[str]] = [[]]
    for t in tokens:
        if t in {",", ";", ":", "!", "?", "(", ")", "."}:
            clauses.append([])
        else:
            clauses[-1].append(t)
    out: set[tuple[str, str, str]] = set()
    for words in clauses:
        for i, w in enumerate(words):
            if w not in _RELATIONS:
                continue
            rel, backwards = _RELATIONS[w]
            j = i + 1
            if j < len(words) and words[j] == _SKIP_AFTER.get(w):
                j += 1
            left = [x for x in words[:i] if x not in _STOP and x not in _RELATIONS][-_WINDOW:]
            right = [x for x in words[j:] if x not in _STOP and x not in _RELATIONS][:_WINDOW]
            for a in left:
                for b in right:
                    if a != b:
                        out.add((rel, b, a) if backwards else (rel, a, b))
    return frozenset(out)


def rule_direction(new: str, source: str) -> str:
    a, b = relations(new), relations(source)
    for rel, x, y in sorted(a):
        if (rel, y, x) in b and (rel, x, y) not in b:
            return f"{x} {rel} {y} reversed"
    return ""


def check(new: str, source: str, similarity: float, threshold: float) -> Verdict:
    """The first refusing rule, or ``Verdict(True)`` when all pass. ``new`` is the request's text,
    ``source`` the cached entry's."""
    reason = rule_cosine(similarity, threshold)
    if reason:
        return Verdict(False, "cosine", reason)
    for name, rule in (("hard_tokens", rule_hard_tokens), ("polarity", rule_polarity),
                       ("direction", rule_direction)):
        reason = rule(new, source)
        if reason:
            return Verdict(False, name, reason)
    return Verdict(True)
