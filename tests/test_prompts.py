"""The prompt-schedule grammar (confiner_core/prompts.py): plain prompts stay plain, schedules are explicit, every
mistake is an error naming the entry, seconds resolve at the output fps."""

import re
from pathlib import Path

import pytest

from confiner_core.errors import UsageError
from confiner_core.generate import GenerateRequest
from confiner_core.prompts import is_schedule, parse_prompt, render_schedule


@pytest.mark.parametrize("text", [
    "a red ball | 16:9 widescreen",           # '16:9' is not a key: no space after the colon
    "a red ball | a blue ball",               # a lone '|' does not make a schedule
    "cinematic, 4:3, 35mm | film grain",
    "a red ball bouncing over green grass",
    "",
    "ratio 2.5s:1 | slow motion",
    "a cat, 16: a dog",                       # a comma is no separator, and this is no schedule (no key first)
    'a sign that reads "0": "open"',          # quotes, but not a FizzNodes schedule: the text does not start so
    "2m: a tall giraffe",                     # minutes are refused as a schedule entry's key only
    "style: anime, a corgi | film grain",     # a word and a colon first, but no key anywhere
])
def test_plain_prompts_are_never_reinterpreted(text):
    s = parse_prompt(text, frames=64, fps=8)
    assert not s.scheduled and not s.travels
    assert [(e.start, e.prompt) for e in s.entries] == [(0, text.strip())]
    assert s.at(0) == s.at(63) == text.strip()
    assert not is_schedule(text)


@pytest.mark.parametrize("text, refused", [
    ("a corgi on a beach | a corgi in snow", True),   # a schedule without keys: it ran as one prompt, '|' and all
    ("a red ball\n| a blue ball", True),
    ("a [red|blue] ball", False),                      # A1111's alternation, inside brackets
    ("0: a | 16: b", False), ("a red ball", False), ("", False),
    ("a red ball | 4: a blue ball", False)])           # one key: parse_prompt's 'ambiguous' says more
def test_a_field_for_schedules_refuses_entries_without_keys(text, refused):
    from confiner_core.prompts import unkeyed_entries

    problem = unkeyed_entries(text, "segment prompts")
    assert (problem is not None) == refused
    assert problem is None or problem.startswith(f"segment prompts {text!r} separates entries with '|' but gives "
                                                 f"none a start key")


@pytest.mark.parametrize("text, key", [("0: a | 1e1: b", "1e1"), ("0: a | +8: b", "+8"), ("0: a | 1.5 s: b", "1.5 s")])
def test_a_malformed_key_is_named_as_such(text, key):
    """They were told to put another key in front ('64: 1e1: b')."""
    with pytest.raises(ValueError, match=rf"entry '{re.escape(key)}: b' starts with '{re.escape(key)}', which is not "
                                         r"a frame \(0, 1, 2, ...\) or seconds key"):
        parse_prompt(text, frames=64, fps=8)


def test_schedule_in_frames_and_seconds():
    s = parse_prompt("0: a red ball | 2.5s: a blue ball\n48: a green ball", frames=64, fps=8)
    assert s.scheduled and s.travels
    assert [(e.start, e.key, e.prompt) for e in s.entries] == [(0, "0", "a red ball"), (20, "2.5s", "a blue ball"),
                                                               (48, "48", "a green ball")]
    assert [s.at(f) for f in (0, 19, 20, 47, 48, 63)] == ["a red ball", "a red ball", "a blue ball", "a blue ball",
                                                          "a green ball", "a green ball"]
    assert s.ranges() == [(0, 20, "a red ball"), (20, 48, "a blue ball"), (48, 64, "a green ball")]
    assert render_schedule(s).splitlines() == ["  frames 0-19 (0.00-2.50 s): a red ball",
                                              "  frames 20-47 (2.50-6.00 s): a blue ball",
                                              "  frames 48-63 (6.00-8.00 s): a green ball"]


def test_seconds_round_to_the_nearest_frame_halves_up():
    # 0.3 s at 25 fps = 7.5 frames -> 8; 0.1 s at 30 fps = 3.0000000000000004 in floats -> exactly 3
    assert parse_prompt("0: a | 0.3s: b", frames=30, fps=25).entries[1].start == 8
    assert parse_prompt("0: a | 0.1s: b", frames=30, fps=30).entries[1].start == 3
    assert parse_prompt("0s: a | 1s: b", frames=30, fps=24).entries[1].start == 24


def test_multiline_schedule_with_blank_lines_and_colons_inside_prompts():
    s = parse_prompt("0: wide shot, 16:9\n\n  8: close-up, 4:3  \n", frames=16)
    assert [(e.start, e.prompt) for e in s.entries] == [(0, "wide shot, 16:9"), (8, "close-up, 4:3")]


def test_a_ratio_after_a_comma_stays_in_its_entry():
    s = parse_prompt("0: a cat, 16:9 widescreen | 32: a dog", frames=64, fps=8)
    assert [(e.start, e.prompt) for e in s.entries] == [(0, "a cat, 16:9 widescreen"), (32, "a dog")]


def test_a1111_alternation_stays_inside_its_entry_in_every_parser():
    """The field check read '[cat|dog]' as one entry's, the parser split it: '0: a [cat|dog] in a field | 16: a
    bird' was refused with "entry 'dog] in a field' has no start key" (a review: one grammar, two tokenisers)."""
    s = parse_prompt("0: a [cat|dog] in a field | 16: a bird", frames=32)
    assert [(e.start, e.prompt) for e in s.entries] == [(0, "a [cat|dog] in a field"), (16, "a bird")]
    assert is_schedule("0: a [cat|dog] | 16: b") and not parse_prompt("a [cat|dog] | grain", frames=8).scheduled
    # nested, and a stray bracket that closes or opens nothing (a look-ahead for ']' made one entry of three)
    assert [e.prompt for e in parse_prompt("0: a [x|[y|z]] | 8: b", frames=16).entries] == ["a [x|[y|z]]", "b"]
    assert [e.start for e in parse_prompt("0: a cat | 16: a dog | 24: x]", frames=32).entries] == [0, 16, 24]
    assert [e.start for e in parse_prompt("0: a [cat | 16: a dog", frames=32).entries] == [0, 16]


def test_one_entry_schedule_does_not_travel():
    s = parse_prompt("0: a red ball", frames=16)
    assert s.scheduled and not s.travels and s.at(15) == "a red ball"


@pytest.mark.parametrize("text,fps,names", [
    ("a red ball | 64: a blue ball", 8, "0: a red ball | 64: a blue ball"),   # ambiguous: shows how to write it
    ("a red ball\n64: a blue ball", 8, "ambiguous"),
    ("0: a | 0: b", 8, "'0: b'"),                 # duplicate
    ("0: a | 1s: b | 8: c", 8, "'8: c'"),         # duplicate after resolving seconds
    ("0: a | 64: b", 8, "'64: b'"),               # beyond 64 frames (0..63)
    ("0: a | 9s: b", 8, "use a smaller key or more frames (or a lower fps, if 8 is not the video's)"),   # 72 > 63
    ("0: a | 32: b | 16: c", 8, "'16: c'"),       # unsorted
    ("0: a | 16:", 8, "'16:'"),                   # empty prompt
    ("0: a || 16: b", 8, "empty entry"),          # empty entry
    ("0: a | b", 8, "'b'"),                       # an entry without key
    ("0: a | 16:9 widescreen", 8, "'16:9 widescreen'"),
    ("8: a | 16: b", 8, "'8: a'"),                # does not start at frame 0
    ("16: b | 0: a", 8, "'0: a' starts at frame 0, before the previous entry (frame 16); list the entries in "
                        "increasing order"),       # out of order, frame 0 last: the fix is the order, not a new 0
    ("0: a | 2s: b", None, "'2s: b'"),            # seconds without an fps (the Long Video node)
    # a schedule typed without spaces: the text as meant ("or it stays one plain prompt" read as if it were taken)
    ("0:a red ball | 16:a blue ball", 8, "without the space after each key: write '0: a red ball | 16: a blue ball'"),
    ("0: a | -3: b", 8, "starts with '-3', which is not a frame"),             # a negative key
    ("-1: a | 16: b", 8, "starts with '-1', which is not a frame (0, 1, 2, ...) or seconds key ('2.5s'): a schedule "
                         "starts at frame 0"),    # (a text not starting with a key was one plain prompt)
    ("-2.5s: a", 8, "starts with '-2.5s'"),
    ("2.5: a | 5s: b", 8, "starts with '2.5', which is not a frame"),
    ("0: a | 2.5: b", 8, "starts with '2.5', which is not a frame (0, 1, 2, ...) or seconds key ('2.5s')"),
    # a decimal comma: its fix was "'64: 1,5s: ...'", the typo kept inside the prompt
    ("0: a | 1,5s: b", 8, "starts with '1,5s', which is not a frame (0, 1, 2, ...) or seconds key ('2.5s'): write "
                          "'1.5s'"),
    ("1,5s: a | 16: b", 8, "starts with '1,5s', which is not a frame (0, 1, 2, ...) or seconds key ('2.5s'): write "
                           "'1.5s'"),
    # the unit spelled out, or a space before it: the fix offered was "'64: 2sec: b'"
    ("0: a | 2sec: b", 8, "starts with '2sec', which is not a frame (0, 1, 2, ...) or seconds key ('2.5s'): write "
                          "'2s'"),
    ("0: a | 2 seconds: b", 8, "starts with '2 seconds', which is not a frame (0, 1, 2, ...) or seconds key "
                               "('2.5s'): write '2s'"),
    ("0: a | 2.5 s: b", 8, "write '2.5s'"),
    # an upper-case unit, a timecode: the fix offered kept the typo in the prompt ("'64: 2S: b'", "'64: 00:02: b'")
    ("0: a | 2S: b", 8, "starts with '2S', which is not a frame (0, 1, 2, ...) or seconds key ('2.5s'): write '2s'"),
    ("0: a | 2 Sec: b", 8, "write '2s'"),
    ("0: a | 00:02: b", 8, "entry '00:02: b' starts with '00:02', a timecode, which schedules do not read: write "
                           "'2s'"),
    ("0: a | 1:30.5: b", 8, "starts with '1:30.5', a timecode, which schedules do not read: write '90.5s'"),
    ("00:00: a | 00:02: b", 8, "starts with '00:00', a timecode, which schedules do not read: write '0s'"),
    # a frame key without its colon: the fix offered was "'64: 16 b'"
    ("0: a | 16 b", 8, "'16 b' has no start key; every entry of a schedule starts with a frame or seconds key "
                       "followed by ': ' (e.g. '16: b')"),
    # minutes as a key: the fix offered was "'64: 1m: a corgi in snow'"
    ("0: a | 1m: a corgi in snow", 8, "entry '1m: a corgi in snow' starts with '1m', minutes, which schedules do not "
                                     "read: write '60s'"),
    ("0: a | 1.5 min: b", 8, "starts with '1.5 min', minutes, which schedules do not read: write '90s'"),
    # a word where the first key goes: told to "remove the ': ' after the number", where there is none
    ("abc: a corgi on a beach | 32: a dog", 64, "starts with 'abc:', which is not a frame (0, 1, 2, ...) or seconds "
                                               "key ('2.5s'): a schedule starts at frame 0, as in '0: a corgi on a "
                                               "beach | 32: a dog'"),
    # a word where the key goes: the fix offered was "'64: abc: a corgi in snow'"
    ("0: a | abc: a corgi in snow", 8, "entry 'abc: a corgi in snow' has no start key; every entry of a schedule "
                                      "starts with a frame or seconds key followed by ': ' (e.g. '64: a corgi in "
                                      "snow' or '2.5s: ...')"),
    # a numbered label where the key goes: the fix offered was "'64: scene two: a corgi in snow'"
    ("0: a | scene two: a corgi in snow", 8, "(e.g. '64: a corgi in snow' or '2.5s: ...')"),
    ("0: a | Shot 2: a corgi in snow", 8, "(e.g. '64: a corgi in snow' or '2.5s: ...')"),
    ("0: a | part II: a corgi in snow", 8, "(e.g. '64: a corgi in snow' or '2.5s: ...')"),
    ("scene 1: a corgi on a beach | 32: a dog", 64, "starts with 'scene 1:', which is not a frame (0, 1, 2, ...) or "
                                                   "seconds key ('2.5s'): a schedule starts at frame 0, as in '0: a "
                                                   "corgi on a beach | 32: a dog'"),
    # every entry a numbered label: it ran as one plain prompt, labels and all
    ("scene 1: a cat | scene 2: a dog", 8, "--prompt 'scene 1: a cat | scene 2: a dog' looks like a schedule with "
                                          "labels where its keys go ('scene 1:'): every entry starts with a frame or "
                                          "seconds key, as in '0: a cat | 32: a dog'"),
    ("Shot one: a cat\nshot two: a dog\nshot three: a bird", 8, "as in '0: a cat | 21: a dog | 42: a bird'"),
    # two words of prose are no label: they stay in the prompt the fix shows
    ("0: a | a corgi: running in snow", 8, "(e.g. '64: a corgi: running in snow' or '2.5s: ...')"),
    # a separator mistyped as a comma: refused with the schedule it meant (it was one prompt, its second key inside)
    ("0: a corgi on a beach, 16: a corgi in snow", 8, "holds another key ('16:') after a ',': separate entries with "
                                                     "' | ' or a line break ('0: a corgi on a beach | 16: a corgi in "
                                                     "snow')"),
    ("0: a; 2.5s: b", 8, "('0: a | 2.5s: b')"),
    # FizzNodes' / JSON's schedule (it was one plain prompt, quotes and all)
    ('"0": "a cat", "16": "a dog"', 8, "FizzNodes/JSON schedule ('\"0\": \"...\"'); ConFiner's schedules are "
                                       "'<frame>: prompt' entries separated by ' | ': '0: a cat | 16: a dog'"),
    ('{"0": "a cat",\n "16": "a dog"}', 8, "'0: a cat | 16: a dog'"),
])
def test_schedule_errors_name_the_entry(text, fps, names):
    with pytest.raises(UsageError) as e:
        parse_prompt(text, frames=64, fps=fps, option="--prompt")
    message = str(e.value)
    assert names in message and "--prompt" in message and "\n" not in message
    assert e.value.option == "--prompt"


def test_an_entry_past_the_last_frame_names_the_callers_frame_count():
    """The command line's message names --frames; a node's (the Long Video's frames widget) does not."""
    for frames_option in ("--frames", "frames"):
        with pytest.raises(UsageError, match=f"use a smaller key or more {frames_option}$"):
            parse_prompt("0: a | 64: b", frames=64, option="--prompt", frames_option=frames_option)
    with pytest.raises(UsageError) as e:   # a Python caller's request names its field
        GenerateRequest(prompt="0: a | 64: b", frames=64).prompt_schedule()
    assert str(e.value).endswith("more frames") and e.value.option == "prompt"


def test_the_help_pages_example_schedules_are_schedules():
    """What the Long Video's help page shows an artist to type is read as the schedule it means."""
    page = (Path(__file__).parent.parent / "web" / "docs" / "ConFinerLongSegmenter.md").read_text()
    examples = [span.replace("\\|", "|") for span in re.findall(r"`([^`]*\\\|[^`]*)`", page)]
    assert examples
    for text in examples:
        schedule = parse_prompt(text, frames=128, fps=8)
        assert schedule.scheduled and schedule.travels, text


def test_seconds_keys_before_the_rate_is_known_refuse_only_what_every_faster_rate_refuses():
    """The Long Video's fps 0 counts at its model's rate, unknown at queue time, so the check runs at the slowest
    (8): a Wan graph was told "frame 40 (5s at 8 fps) ... or a lower fps", then the run said frame 80 (16 fps)."""
    with pytest.raises(UsageError) as e:
        parse_prompt("0: a | 5s: b", 17, 8, slowest_fps=True)
    # in seconds, true at every rate (an artist read "frame 40" on a Wan graph, where 5s is frame 80)
    assert str(e.value) == ("prompt: entry '5s: b' starts at 5 s, after the video's end: 17 frames last at most "
                            "2.12 s (at 8 fps, the slowest model rate; less at a faster one); use a smaller key or "
                            "more frames")
    # on or before a frame key at 8 fps, but after it at Wan's 16: left to the run, which knows the rate
    parse_prompt("0: a | 16: b | 2s: c", 64, 8, slowest_fps=True)
    # a schedule with no frame 0 names its earliest entry, also one written later (it named '8: a cat', the first
    # written, and suggested 'a dog': a review)
    with pytest.raises(UsageError, match=re.escape("the first entry '0.5s: a dog' starts at frame 4 or later (0.5s at "
                                                   "8 fps, the slowest model rate); a schedule starts at frame 0 "
                                                   "(e.g. '0: a dog | ...')")):
        parse_prompt("8: a cat | 0.5s: a dog", 32, 8, slowest_fps=True)
    with pytest.raises(UsageError, match="the same frame as entry 16"):
        parse_prompt("0: a | 16: b | 2s: c", 64, 8)
    # a frame key on or before a seconds key at the slowest rate is before it at every rate
    with pytest.raises(UsageError, match=r"before the previous entry \(2 s\)"):
        parse_prompt("0: a | 2s: b | 10: c", 64, 8, slowest_fps=True)
    # ... named in seconds there: its frame at the slowest rate (8 for '1s') is no frame of a 16 fps Wan video
    with pytest.raises(UsageError, match=r"'0: a' starts at frame 0, before the previous entry \(1 s\); list"):
        parse_prompt("1s: b | 0: a", 64, 8, slowest_fps=True)


def test_seconds_keys_apart_in_seconds_but_on_one_frame_at_the_slowest_rate_are_left_to_the_run():
    """1s and 1.05s are frame 8 at 8 fps but 16 and 17 at 16: refused before the model (and its rate) was known."""
    schedule = parse_prompt("0: a | 1s: b | 1.05s: c", 64, 8, slowest_fps=True)
    assert [e.start for e in schedule.entries] == [0, 8, 8]
    with pytest.raises(UsageError, match="the same frame as entry 1s"):
        parse_prompt("0: a | 1s: b | 1.05s: c", 64, 8)
    with pytest.raises(UsageError, match="before the previous entry"):   # smaller seconds: before at every rate
        parse_prompt("0: a | 2s: b | 1s: c", 64, 8, slowest_fps=True)
    # left to the run, entries come back in order
    assert [e.key for e in parse_prompt("0: a | 16: b | 1s: c", 64, 8, slowest_fps=True).entries] == ["0", "1s", "16"]
