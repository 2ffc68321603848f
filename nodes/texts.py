"""A node's text as the frontend shows it: lines of at most :data:`LINE_WIDTH` characters broken between words (the
frontend breaks a line anywhere, also inside a word), and an error's message cut to a few such lines.

``web/confiner.js`` (``wrapped``, ``cut``, ``fixAt``, ``firstLines``) lays out the frontend's own texts by the same
rules, so a failure reads alike whether the server or the page says it; ``tests/test_node_texts.py`` runs both on the
same messages. No ComfyUI import here: the rules are tested without a host.
"""

from __future__ import annotations

#: the characters of one line of a node's text that the frontend shows at the templates' node widths (it neither
#: wraps nor scrolls that text)
LINE_WIDTH = 60


def wrapped(text: str, width: int = LINE_WIDTH) -> list[str]:
    """``text``'s words in lines of at most ``width`` characters, greedily; a longer word has a line of its own."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def cut(lines: list[str], count: int, more: str, force: bool = False, width: int = LINE_WIDTH) -> list[str]:
    """``lines`` kept to ``count``, the last of them ending ``more`` (within ``width``, keeping one word at least)
    where any were left out, or (``force``) where they are just ``count``."""
    if len(lines) < count or (len(lines) == count and not force):
        return lines
    words = lines[count - 1].split(" ")
    while len(words) > 1 and len(" ".join(words) + more) > width:
        words.pop()
    return [*lines[:count - 1], " ".join(words) + more]


def _word(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def fix_at(text: str) -> int:
    """Where a message's fix begins: the index of its last ": " outside parentheses and quotes ("... (e.g. '0: a dog
    | ...')" holds an example's, not the fix's), -1 where it has none. A quote opens after a non-word character and
    closes before one (the apostrophe of "model's" does neither)."""
    depth, quoted, at = 0, False, -1
    for i, ch in enumerate(text):
        before = text[i - 1] if i > 0 else " "
        after = text[i + 1] if i + 1 < len(text) else " "
        if ch == "'" and not quoted and not _word(before):
            quoted = True
        elif ch == "'" and quoted and not _word(after):
            quoted = False
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == ":" and after == " " and depth == 0:
            at = i
    return at


#: how a refusal of several problems that one model's file may explain leads (``host.refuse_all``): the file first,
#: then the fixes if the file is the one meant
FILE_FIRST, IF_THIS_ONE = "if another model was meant, pick its file there", "; if this one is, "


def numbered_problems(problems) -> str | None:
    """The problems found (None and empty ones left out) in one message: one as it is, several as "2 problems: (1)
    ...; (2) ..." (:func:`first_problem` reads it back); None where there are none. An artist who made two mistakes
    met them one Run at a time, each after the fix of the one before."""
    problems = [str(p) for p in problems if p]
    if len(problems) < 2:
        return problems[0] if problems else None
    return f"{len(problems)} problems: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))


def first_problem(text: str) -> tuple[str, int]:
    """A refusal of several problems ("2 problems: (1) ...; (2) ...", ``host.refuse_all``) as its first problem
    alone, and how many more it has; any other message as it is, and 0."""
    count, sep, rest = text.partition(" problems: (1) ")
    second = rest.find("; (2) ")
    if not sep or not (count.isascii() and count.isdigit()) or second < 0:
        return text, 0
    return f"{count} problems: (1) {rest[:second]}", int(count) - 1


def error_lines(message: str, lines: int = 3) -> str:
    """An error's message on a node: at most ``lines`` lines, the rest in the error dialog. Once that dialog was
    closed, the failed node said only "stopped by an error (see the error)" (a trial). A message cut short keeps its
    fix (:func:`fix_at`) on its last lines where that leaves a line for its start: the cut took "use 61 or 65" and
    "connect one to temporal VAE ..." off refusals and kept the reasons (trials). A refusal of several problems
    shows its first, with its fix, and says how many more the dialog holds (the Wan template's 64 frames and 5 s
    key ended "(1, 5, 9, … (see the error)")."""
    whole = wrapped(message)
    if len(whole) <= lines:
        return "\n".join(whole)
    text, more = first_problem(" ".join(whole))
    tail = f" (and {more} more: see the error)" if more else " (see the error)"
    lead, sep, _ = text.partition(IF_THIS_ONE)
    if sep and lead.lower().endswith(FILE_FIRST):   # a model's file that may be the mistake: its fix, not the last problem's
        text, tail = lead, " (if this one is, see the error)"   # (a trial read a VAE's fix for a file in the wrong slot)
    first = wrapped(text + tail)
    if len(first) <= lines:
        return "\n".join(first)
    at = fix_at(text)
    ending = wrapped(text[at + 2:] + tail) if at >= 0 else []
    if at >= 0 and len(ending) < lines:
        return "\n".join([*cut(wrapped(text[:at + 1]), lines - len(ending), " …"), *ending])
    # (the first problem alone may just fill the lines: its end gives way to the tail)
    return "\n".join(cut(wrapped(text), lines, " …" + tail, force=True))
