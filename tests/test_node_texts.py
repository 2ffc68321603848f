"""How a node shows an error's message (nodes/texts.py), and that the frontend's own texts (web/confiner.js) lay
messages out by the same rules: both run on the same messages here, the JavaScript under Node.js where it is
installed. No ComfyUI needed: nodes/texts.py imports nothing of it."""

import importlib.util
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("node_texts", ROOT / "nodes" / "texts.py")
texts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(texts)

FRAMES = ("frames = 64: the windows are joined into one clip of the refining expert's latent space, and the Wan 2.1 "
          "latent space holds 4k+1 frames (1, 5, 9, ...); 64 frames would be cut by its VAE: use 61 or 65")
BRIDGE = ("the spatial and temporal experts work in different latent spaces (SD 1.5 latents and Wan 2.1 latents), and "
          "bridging them needs their VAEs, and 1 is missing; for Wan 2.1 (the temporal expert): connect one to "
          "temporal VAE (temporal_vae) on ConFiner Refine Experts")
FIRST_ENTRY = ("segment prompts (segment_prompts): the first entry '0.5s: a dog running on the beach at dawn' starts "
               "at frame 4 or later (0.5s at 8 fps, the slowest model rate); a schedule starts at frame 0 (e.g. '0: a "
               "dog running on the beach at dawn | ...')")
MORE = " … (see the error)"
TWO = ("2 problems: (1) " + FRAMES + "; (2) segment prompts (segment_prompts): entry '5s: a corgi in snow' starts at "
       "frame 80 (5s at 16 fps), beyond the video's 64 frames (0..63); use a smaller key or more frames")
# a refusal that leads with the model's file (host.refuse_all): its node showed the last problem's fix, a VAE's, for
# a Wan file in the SD template's spatial loader (a trial)
FILE = ("the spatial model, Wan 2.1 / 2.2 (WAN21_T2V), file 'wan2.1_t2v_1.3B_fp16.safetensors' in loader 'Load "
        "Diffusion Model', does not fit the prompt or VAE connected for it: " + texts.FILE_FIRST + texts.IF_THIS_ONE +
        "2 problems: (1) the spatial expert's positive conditioning is 4096 wide: encode it with its CLIP; (2) " +
        BRIDGE)
REAL = [TWO, FRAMES, BRIDGE, FIRST_ENTRY, FILE, "short: fix", "no colon at all " * 8,
        "the file '/models/diffusion_models/wan2.1_t2v_1.3B_fp16_with_a_very_long_name_indeed.safetensors' is no "
        "model: pick another file in its loader"]


def test_a_message_cut_short_keeps_its_fix():
    """Three lines of a long refusal kept its reason and cut its fix ("...; 64 … (see the error)", the "use 61 or 65"
    left with the dialog; "connect one to temporal VAE ..." too: trials). The fix, after the last ": " outside
    parentheses and quotes, ends the text where it leaves a line for the start; else the start alone."""
    assert texts.error_lines(FRAMES) == ("frames = 64: the windows are joined into one clip of the\nrefining "
                                         "expert's latent space, and the Wan 2.1 latent …\nuse 61 or 65 (see the "
                                         "error)")
    assert texts.error_lines(BRIDGE) == ("the spatial and temporal experts work in different latent …\nconnect one "
                                         "to temporal VAE (temporal_vae) on ConFiner\nRefine Experts (see the error)")
    # the ": " of an example in quotes or parentheses is no fix's (the cut kept "dog running ... | ...')")
    said = texts.error_lines(FIRST_ENTRY)
    assert said.endswith(MORE) and "| ...')" not in said, said
    assert texts.fix_at(FIRST_ENTRY) == FIRST_ENTRY.index(": the first entry")
    assert texts.fix_at("the model's file 'a: b': use c") == len("the model's file 'a: b'")
    assert texts.error_lines("short: fix") == "short: fix"
    assert texts.error_lines(FILE) == ("the spatial model, Wan 2.1 / 2.2 (WAN21_T2V), file …\nif another model was "
                                       "meant, pick its file there (if this one\nis, see the error)")
    # several problems: the first, with its fix, and how many more (the Wan template at 64 frames, its 5 s key past
    # the end too, ended "(1, 5, 9, … (see the error)": a trial)
    assert texts.error_lines(TWO) == ("2 problems: (1) frames = 64: the windows are joined into one\nclip of the "
                                      "refining expert's latent space, and the Wan …\nuse 61 or 65 (and 1 more: see "
                                      "the error)")
    assert texts.first_problem("3 problems: (1) a: b; c; (2) d; (3) e") == ("3 problems: (1) a: b; c", 2)
    assert texts.first_problem("frames = 64: use 61; (2) is no list") == ("frames = 64: use 61; (2) is no list", 0)
    long_fix = FRAMES.replace("use 61 or 65", "use 61 or 65, " + "the nearest counts of 4k+1 frames to it, " * 3)
    assert texts.error_lines(long_fix).endswith(MORE) and "nearest" not in texts.error_lines(long_fix)
    for message in REAL:
        lines = texts.error_lines(message).split("\n")
        assert len(lines) <= 3 and all(len(line) <= texts.LINE_WIDTH or " " not in line for line in lines), lines
    # whatever is left out is said: a first problem that just filled the lines lost its "(and 3 more: ...)"
    for message in random_messages(400, seed=1):
        said = texts.error_lines(message)
        assert len(said.split("\n")) <= 3, said
        assert said.split() == message.split() or " ".join(said.split()).endswith("see the error)"), (said, message)


def random_messages(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["the", "model", "expert's", "VAE", "(temporal_vae)", "'0:", "a", "dog'", "use", "61", "or", "65:",
             "frames", "(1,", "5,", "9)", "connect", "one", "to", "e.g.", "'flux1-dev.safetensors',", "x" * 45,
             "y" * 65, "a:", "b'", "(c:", "d)", "…", "latent", "space;"]
    def message() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
    # and refusals of several problems, as host.refuse_all joins them
    return [message() if i % 2 else f"{rng.randint(2, 4)} problems: (1) {message()}; (2) {message()}"
            for i in range(n)]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js not installed: the frontend's rules run under it")
def test_the_frontend_lays_out_messages_as_the_server_does(tmp_path):
    """web/confiner.js cuts the messages it shows (a node that failed without text of its own) by firstLines, the
    server's "stopped by an error:" lines by nodes/texts.py: they differed on long words and where the cut fell
    (a review). The script's own functions run here on the same messages, outside a browser."""
    source = (ROOT / "web" / "confiner.js").read_text(encoding="utf-8")

    def function(name: str) -> str:   # a top-level function's whole text
        start = source.index(f"\nfunction {name}(") + 1
        end = source.index("\n}\n", start) + 2
        return source[start:end]

    line = source[source.index("\nconst LINE = "):].split("\n")[1]
    messages = REAL + random_messages(400)
    script = tmp_path / "lines.mjs"
    script.write_text("\n".join([line, *(function(f) for f in ("wrapped", "cut", "fixAt", "firstProblem",
                                                                 "fileFirst", "firstLines")),
                                 f"const messages = {json.dumps(messages)};",
                                 "console.log(JSON.stringify(messages.map((m) => firstLines(m))));"]),
                      encoding="utf-8")
    frontend = json.loads(subprocess.run(["node", str(script)], capture_output=True, text=True, check=True).stdout)
    assert frontend == [texts.error_lines(m) for m in messages]
