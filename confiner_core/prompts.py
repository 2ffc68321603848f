"""Prompt schedules (prompt travel): the one grammar, parsed here for the command line, the library and the nodes.

A prompt is either **plain text**, used unchanged for every frame, or a **schedule**::

    0: a red ball bouncing | 64: a blue ball bouncing | 128: a green ball bouncing

    0: a corgi on a sunny beach
    2.5s: a corgi in deep snow

Grammar (``|`` and line breaks separate entries; blank lines are ignored)::

    schedule := entry (("|" | newline) entry)*
    entry    := key ":" whitespace prompt
    key      := digits                 an output frame, counted from 0
              | digits["." digits] "s" seconds at the output fps: frame = round(seconds * fps), halves up

Only explicit syntax makes a schedule: the text must *start* with a key followed by ``:`` and a space. Anything
else is a plain prompt and is never split or reinterpreted (``"a red ball | 16:9 widescreen"`` stays one prompt:
``16:9`` has no space after the colon). Plain text that nevertheless holds a schedule-like entry after a separator
(``"a red ball | 64: a blue ball"``) is ambiguous and refused with the schedule spelled out.

A schedule must start at frame 0 and list its keys in increasing order, each inside the video (``0 <= frame <
frames``), each with a non-empty prompt; every entry of a schedule needs a key. Two near misses are refused with
the schedule spelled out: an entry holding another key after a comma (``"0: a cat, 16: a dog"``) and a
FizzNodes/JSON schedule (``'"0": "a cat", "16": "a dog"'``). Errors name the entry.
Entry ``i`` covers frames ``[start_i, start_{i+1})``; :func:`render_schedule` prints those ranges.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from .errors import UsageError

KEY = r"(?P<key>\d+(?:\.\d+)?s|\d+)"
ENTRY = re.compile(rf"^\s*{KEY}\s*:(?=\s|$)\s*(?P<prompt>.*?)\s*$", re.DOTALL)
# An entry-like key right after a separator (or at a line start) inside text that is not a schedule.
EMBEDDED_KEY = re.compile(rf"(?:\||\n)\s*{KEY}\s*:(?=\s|$)")
# a key whose ': ' lacks the space ("0:a red ball"; "16:9" is a ratio, not a key: a digit follows)
UNSPACED_KEY = re.compile(rf"^\s*{KEY}\s*:(?=[^\s\d])")
# inside a schedule's entry, a key after a comma or semicolon: an entry separator mistyped ("0: a, 16: b")
STRAY_KEY = re.compile(rf"[,;]\s*{KEY}\s*:(?=\s|$)")
# a start that looks like a key but is none: signed, a stray dot, a decimal comma, an exponent or a space before the
# s ("-3: ...", "2.5: ...", "1,5s: ...", "+8: ...", "1e1: ...", "1.5 s: ..."; see misspelt_key). "4k: ..." stays a
# prompt.
KEY_LIKE = re.compile(r"\s*([-+]?(?:\d[\d.,]*|\.[\d.,]+)(?:e[-+]?\d+)?(?:\s*(?:seconds?|secs?|s))?)\s*:(?=\s|$)",
                      re.IGNORECASE)   # ("2S: ..." too: its fix was "'64: 2S: ...'", the typo kept in the prompt)
# a seconds key's unit spelled out ("2sec", "2 seconds"): the key is written '2s'
SECONDS_WORD = re.compile(r"\s*(?:seconds?|secs?)$", re.IGNORECASE)
# a video timecode as the key ("00:02: a blue ball", "0:01.5: ..."): the key is written in seconds
TIMECODE = re.compile(r"^\s*(?:(\d+):)?(\d+):(\d\d(?:\.\d+)?)\s*:(?=\s|$)")
# an entry whose frame key lacks its colon ("16 a blue ball")
NUMBER_FIRST = re.compile(r"^\s*(\d+(?:\.\d+)?s?)\s+(?=\D)(.+)$", re.DOTALL)
# minutes as a schedule entry's key ("1m: ...", "2 min: ..."): written in seconds (in a plain prompt, "2m: a tall
# giraffe" stays text)
MINUTE_KEY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:minutes?|mins?|m)\s*:(?=\s|$)", re.IGNORECASE)
# a word where the key belongs ('abc: a corgi', 'start: ...'), or a numbered label ('scene 2: ...', 'shot two: ...',
# 'part II: ...'): the prompt after it, to show with a key in its place. Two words of prose ('a corgi: running') are
# no label: they stay in the prompt the fix shows.
NUMBER_WORD = r"(?:\d+|[ivx]+|one|two|three|four|five|six|seven|eight|nine|ten)"
WORD_KEY = re.compile(rf"^\s*[^\W\d]\w*(?:\s+{NUMBER_WORD})?\s*:\s+(.+)$", re.DOTALL | re.IGNORECASE)
# a numbered label alone ('scene 2: ...'): every entry of "scene 1: a cat | scene 2: a dog" (a schedule, its keys
# labels) starts with one; "style: anime | film grain" stays a plain prompt
NUMBERED_LABEL = re.compile(rf"^\s*([^\W\d]\w*\s+{NUMBER_WORD})\s*:\s+(.+)$", re.DOTALL | re.IGNORECASE)
# FizzNodes' / JSON's schedule ('"0": "a cat", "16": "a dog"'), common in ComfyUI graphs
QUOTED_ENTRY = re.compile(r'"(\d+)"\s*:\s*"((?:[^"\\]|\\.)*)"')
EXAMPLE = "0: a red ball | 64: a blue ball"


@dataclass(frozen=True)
class Entry:
    start: int      # first output frame of this prompt
    prompt: str
    key: str = ""   # the key as written ("64", "2.5s"); empty for a plain prompt


@dataclass(frozen=True)
class PromptSchedule:
    """Resolved prompts over ``frames`` output frames: ``entries`` start at frame 0 and increase strictly."""

    entries: tuple
    frames: int
    fps: float | None = None
    scheduled: bool = False  # written as a schedule (even with one entry), not as a plain prompt

    @property
    def travels(self) -> bool:
        """More than one prompt: the video needs ConFiner-Long's per-segment prompts."""
        return len(self.entries) > 1

    @property
    def first(self) -> str:
        return self.entries[0].prompt

    def index_at(self, frame: int) -> int:
        """The index of the entry in force at output frame ``frame`` (frames past the end keep the last one)."""
        return max((i for i, e in enumerate(self.entries) if e.start <= frame), default=0)

    def at(self, frame: int) -> str:
        """The prompt in force at output frame ``frame`` (frames past the end keep the last prompt)."""
        return self.entries[self.index_at(frame)].prompt

    def ranges(self) -> list[tuple[int, int, str]]:
        """(first frame, end frame exclusive, prompt) per entry."""
        ends = [e.start for e in self.entries[1:]] + [self.frames]
        return [(e.start, end, e.prompt) for e, end in zip(self.entries, ends)]


def plain(prompt: str, frames: int, fps: float | None = None) -> PromptSchedule:
    """One prompt for every frame."""
    return PromptSchedule((Entry(0, prompt.strip()),), frames, fps, scheduled=False)


def split_entries(line: str) -> list[str]:
    """A line of a schedule cut at its entry separators, every parser's one reading: each '|' outside a matched pair
    of brackets (A1111's [a|b] alternation, also nested, stays inside its entry's prompt; a stray ']' or '[' protects
    nothing: a look-ahead for ']' read "0: a | 16: b | 24: c]" as one entry)."""
    inside, opened = [0] * (len(line) + 1), []
    for i, ch in enumerate(line):
        if ch == "[":
            opened.append(i)
        elif ch == "]" and opened:
            start = opened.pop()
            inside[start] += 1
            inside[i] -= 1
    pieces, depth, last = [], 0, 0
    for i, ch in enumerate(line):
        depth += inside[i]
        if ch == "|" and depth == 0:
            pieces.append(line[last:i])
            last = i + 1
    return pieces + [line[last:]]


def is_schedule(text: str) -> bool:
    """Whether ``text`` is written as a schedule (starts with ``<key>: ``)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return ENTRY.match(split_entries(first)[0]) is not None


def misspelt_key(piece: str) -> str | None:
    """The start of ``piece`` where it is written as a key but is no frame or seconds key ('-3', '2.5'), else None."""
    m = KEY_LIKE.match(piece)
    return m.group(1) if m and not re.fullmatch(KEY, m.group(1)) else None


def key_fix(bad: str) -> str:
    """The key a misspelt one meant, where that is plain: a decimal comma ('1,5s' -> ": write '1.5s'"), the unit
    spelled out ('2sec', '2 seconds' -> ": write '2s'")."""
    meant = SECONDS_WORD.sub("s", bad).replace(",", ".").replace(" ", "").lower()
    return f": write {meant!r}" if meant != bad and re.fullmatch(KEY, meant) else ""


def timecode_fix(piece: str) -> str | None:
    """A timecode written as the key ('00:02: b' -> ": timecodes are not read: write '2s'"), else None."""
    m = TIMECODE.match(piece)
    if m is None:
        return None
    hours, minutes, seconds = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
    total = f"{hours * 3600 + minutes * 60 + seconds:g}s"
    return f"{piece.strip()[:m.end()].strip().rstrip(':').strip()!r}, a timecode, which schedules do not read: " \
           f"write {total!r}"


def resolve_key(key: str, fps: float | None, entry: str, option: str) -> int:
    """Output frame of a key: frames as written, seconds at the output fps rounded to the nearest frame."""
    if not key.endswith("s"):
        return int(key)
    if fps is None:
        raise UsageError(f"{option}: entry {entry!r} gives its start in seconds, which needs the output fps; "
                         f"give it in frames instead (e.g. '64: ...')", option)
    exact = Fraction(key[:-1]) * Fraction(fps)
    return math.floor(exact + Fraction(1, 2))


def unkeyed_entries(text: str, option: str = "prompt") -> str | None:
    """Where text that is meant as a schedule (the Long Video's segment prompts) separates entries with '|' but
    keys none, why it is refused; None otherwise. A plain prompt may hold a '|' ("35mm | film grain"): only a field
    that exists for schedules reads it as a mistake (it ran as one prompt, the '|' and all)."""
    if text and not is_schedule(text) and not EMBEDDED_KEY.search(text) and \
            any(len(split_entries(line)) > 1 for line in text.splitlines()):
        return (f"{option} {text!r} separates entries with '|' but gives none a start key: write a frame or seconds "
                f"key on every entry, starting at 0 (e.g. '{EXAMPLE}'), or remove the '|' for one prompt")
    return None


def later_at_some_rate(key: str, before: str) -> bool:
    """Whether a seconds ``key`` can start after the entry keyed ``before`` at some frame rate faster than the
    slowest: after a frame key (a faster rate moves it later), or after a smaller seconds key (rounding to frames
    merges them at a slow rate: 1s and 1.05s are frame 8 at 8 fps, 16 and 17 at 16)."""
    return not before.endswith("s") or float(key[:-1]) > float(before[:-1])


def parse_prompt(text: str, frames: int, fps: float | None = None, option: str = "prompt",
                 frames_option: str = "frames", slowest_fps: bool = False,
                 rates: dict | None = None) -> PromptSchedule:
    """The schedule written in ``text`` for a video of ``frames`` frames at ``fps`` (needed for seconds keys).

    Raises :class:`~confiner_core.errors.UsageError` naming ``option`` and the offending entry (and
    ``frames_option``, how the caller names the frame count, when an entry starts past the last frame).
    ``slowest_fps``: the rate is not known yet and ``fps`` is the slowest it can be (a node whose rate is its
    model's): a seconds key starts at least where it says, so only what holds at every faster rate is refused (a
    seconds key past the end, not one that falls on or before a frame key at this rate). ``rates`` (with
    ``slowest_fps``): the rates the model may have, by the models that make them ({"Wan 2.1": 16.0}), so that a key
    past the end is told how long the video lasts at each."""
    text = text or ""
    if not is_schedule(text):
        pieces = [piece for line in text.splitlines() for piece in split_entries(line) if piece.strip()]
        if len(pieces) > 1 and all(UNSPACED_KEY.match(piece) for piece in pieces):
            # the text as meant ("or it stays one plain prompt" read as if it would be taken as one)
            spaced = " | ".join(UNSPACED_KEY.sub(lambda m: m.group(0).strip() + " ", piece.strip(), count=1)
                                for piece in pieces)
            raise UsageError(f"{option} {text!r} looks like a schedule without the space after each key: write "
                             f"'{spaced}'", option)
        quoted = QUOTED_ENTRY.findall(text)
        if quoted and text.strip().startswith(('"', "{")):
            spelled = " | ".join(f"{k}: {p}" for k, p in quoted)
            raise UsageError(f"{option} is written as a FizzNodes/JSON schedule ('\"0\": \"...\"'); ConFiner's "
                             f"schedules are '<frame>: prompt' entries separated by ' | ': '{spelled}'", option)
        bad = misspelt_key(text)
        if bad:   # a schedule whose first key is negative or has a stray dot: it was read as one plain prompt
            raise UsageError(f"{option} {text!r} starts with {bad!r}, which is not a frame (0, 1, 2, ...) or seconds "
                             f"key ('2.5s'){key_fix(bad)}: a schedule starts at frame 0 (e.g. '{EXAMPLE}'), or drop "
                             f"the ': ' after the number to keep one plain prompt", option)
        if timecode_fix(text) and len(pieces) > 1 and \
                any(ENTRY.match(p) or TIMECODE.match(p) for p in pieces[1:]):   # a schedule keyed by timecodes
            raise UsageError(f"{option} {text!r} starts with {timecode_fix(text)}", option)
        first = WORD_KEY.match(pieces[0]) if pieces else None
        if first and EMBEDDED_KEY.search(text):   # 'abc: a corgi | 32: ...': a word where the first key goes
            word = pieces[0].strip()[:pieces[0].strip().index(":")]
            meant = " | ".join(["0: " + first.group(1).strip(), *(p.strip() for p in pieces[1:])])
            raise UsageError(f"{option} {text!r} starts with {word + ':'!r}, which is not a frame (0, 1, 2, ...) or "
                             f"seconds key ('2.5s'): a schedule starts at frame 0, as in {meant!r}", option)
        labelled = [NUMBERED_LABEL.match(piece) for piece in pieces]
        if len(pieces) > 1 and all(labelled):   # 'scene 1: a cat | scene 2: a dog' ran as one plain prompt
            meant = " | ".join(f"{i * frames // len(pieces)}: {m.group(2).strip()}" for i, m in enumerate(labelled))
            raise UsageError(f"{option} {text!r} looks like a schedule with labels where its keys go "
                             f"({labelled[0].group(1).strip() + ':'!r}): every entry starts with a frame or seconds "
                             f"key, as in {meant!r}; or drop the labels' ':' to keep one plain prompt", option)
        if EMBEDDED_KEY.search(text):
            raise UsageError(
                f"{option} {text!r} is ambiguous: it holds a schedule entry ('<frame>: prompt') but does not start "
                f"with one. Write a schedule with a key on every entry, starting at frame 0 (e.g. '{EXAMPLE}', "
                f"or '2.5s: ...' for seconds), or remove the ': ' after the number to keep one plain prompt", option)
        return plain(text, frames, fps)
    pieces = [(piece, line_no) for line_no, line in enumerate(text.splitlines(), 1) if line.strip()
              for piece in split_entries(line)]
    entries: list[Entry] = []
    written: dict[Entry, tuple[str, str]] = {}   # each entry as written, and where it starts (for the messages)
    for piece, line_no in pieces:
        where = f"entry {piece.strip()!r}" if piece.strip() else f"an empty entry (line {line_no}, between '|')"
        if not piece.strip():
            raise UsageError(f"{option}: {where}: remove the extra '|' or give it a prompt", option)
        m = ENTRY.match(piece)
        bad = misspelt_key(piece) if m is None else None
        if bad:
            raise UsageError(f"{option}: {where} starts with {bad!r}, which is not a frame (0, 1, 2, ...) or seconds "
                             f"key ('2.5s'){key_fix(bad) or f'; as in {EXAMPLE!r}'}", option)
        if m is None and timecode_fix(piece):
            raise UsageError(f"{option}: {where} starts with {timecode_fix(piece)}", option)
        minutes = MINUTE_KEY.match(piece) if m is None else None
        if minutes:
            raise UsageError(f"{option}: {where} starts with {piece[:minutes.end() - 1].strip()!r}, minutes, which "
                             f"schedules do not read: write '{float(minutes.group(1)) * 60:g}s'", option)
        if m is None:
            number = NUMBER_FIRST.match(piece)   # '16 a blue ball': the key is there, its colon is not
            word = WORD_KEY.match(piece)         # 'abc: a corgi': a word where the key goes (not '64: abc: ...')
            example = f"'{number.group(1)}: {number.group(2).strip()}'" if number else \
                f"'64: {word.group(1).strip()}' or '2.5s: ...'" if word else f"'64: {piece.strip()}' or '2.5s: ...'"
            raise UsageError(f"{option}: {where} has no start key; every entry of a schedule starts with a frame "
                             f"or seconds key followed by ': ' (e.g. {example}), as in '{EXAMPLE}'", option)
        key, prompt = m.group("key"), m.group("prompt")
        stray = STRAY_KEY.search(prompt)
        if stray:
            first, rest = prompt[:stray.start()].strip(), prompt[stray.start() + 1:].strip()
            raise UsageError(f"{option}: {where} holds another key ('{stray.group('key')}:') after a "
                             f"'{stray.group(0)[0]}': separate entries with ' | ' or a line break ('{key}: {first} | "
                             f"{rest}'), or drop the ': ' after the number to keep it in the prompt", option)
        if not prompt:
            raise UsageError(f"{option}: {where} has an empty prompt; write one after '{key}: ' or remove the entry",
                             option)
        start = resolve_key(key, fps, piece.strip(), option)
        seconds = key.endswith("s")
        at = f"frame {start}" + (f" ({key} at {fps:g} fps)" if seconds else "")
        if seconds and slowest_fps and start >= frames:
            # the model's rate is not known yet: say it in seconds, true at every rate (its frame at the slowest
            # rate, 40 for '5s', was no frame the video would have on a 16 fps Wan graph), at each model's rate
            lasts = ", ".join(f"{frames / r:.3g} s at {name}'s {r:g} fps" for name, r in rates.items()) if rates \
                else f"at most {frames / fps:.3g} s (at {fps:g} fps, the slowest model rate; less at a faster one)"
            raise UsageError(f"{option}: {where} starts at {key[:-1]} s, after the video's end: {frames} frames "
                             f"last {lasts}; use a smaller key or more {frames_option}", option)
        if seconds and slowest_fps:
            at = f"frame {start} or later ({key} at {fps:g} fps, the slowest model rate)"
        if start >= frames:
            raise UsageError(f"{option}: {where} starts at {at}, beyond the video's {frames} frames (0..{frames - 1}); "
                             f"use a smaller key or more {frames_option}"
                             + (f" (or a lower fps, if {fps:g} is not the video's)" if seconds and not slowest_fps
                                else ""), option)
        if slowest_fps and seconds and entries and start <= entries[-1].start and \
                later_at_some_rate(key, entries[-1].key):
            entries.append(Entry(start, prompt, key))   # at the model's rate it may fall after the entry before
            written[entries[-1]] = (piece.strip(), at)
            continue
        if entries and start == entries[-1].start:
            raise UsageError(f"{option}: {where} starts at {at}, the same frame as entry "
                             f"{entries[-1].key}: {entries[-1].prompt!r}; give each entry its own start", option)
        if entries and start < entries[-1].start:
            before = entries[-1]   # a seconds key before the model's rate is known: in seconds (its frame at the
            # slowest rate, 8 for '1s', was no frame of a 16 fps Wan video)
            said = f"{before.key[:-1]} s" if slowest_fps and before.key.endswith("s") else f"frame {before.start}"
            raise UsageError(f"{option}: {where} starts at {at}, before the previous entry ({said}); list the "
                             f"entries in increasing order", option)
        entries.append(Entry(start, prompt, key))
        written[entries[-1]] = (piece.strip(), at)
    if slowest_fps:   # entries left to the run's check may be out of order at the slowest rate
        entries.sort(key=lambda e: e.start)
    if entries[0].start != 0:   # checked last: "16: a | 0: b" is out of order, and the fix is the order
        # (the earliest entry, also where the sort above moved one first: it named the first written)
        piece, at = written[entries[0]]
        raise UsageError(f"{option}: the first entry {piece!r} starts at {at}; a schedule starts at frame 0 "
                         f"(e.g. '0: {entries[0].prompt} | ...')", option)
    return PromptSchedule(tuple(entries), frames, fps, scheduled=True)


def render_schedule(schedule: PromptSchedule) -> str:
    """The resolved schedule, one line per entry: frame range (and seconds when the fps is known) -> prompt."""
    lines = []
    for start, end, prompt in schedule.ranges():
        span = f"frames {start}-{end - 1}"
        if schedule.fps:
            span += f" ({start / schedule.fps:.2f}-{end / schedule.fps:.2f} s)"
        lines.append(f"  {span}: {prompt}")
    return "\n".join(lines)
