"""What gets installed: every import is listed in a requirements file, the ComfyUI install stays lean (the nodes
import nothing ComfyUI does not provide), pyproject.toml agrees with the requirements files and carries complete
Comfy Registry metadata."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10 (pyproject's requires-python): tomli, as requirements-test.txt lists
    import tomli as tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ({"confiner_core", "nodes", "comfy_support", "tiny_diffusers"} | {p.stem for p in (ROOT / "tests").glob("*.py")}
         | {p.stem for p in (ROOT / "tools").glob("*.py")} | {p.stem for p in (ROOT / "bench").glob("*.py")})
# GPU accelerators used only where installed (their absence is the tested path): flash-attn-4 for the speed presets
OPTIONAL = {"flash_attn"}
# import name -> distribution name, where they differ
DISTRIBUTION = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml"}
# Installed by the README's commands themselves ("pip install torch==2.13.0 -r ...").
BY_COMMAND = {"torch"}
NEVER_IN_COMFYUI = {"opencv-python-headless", "opencv-python", "accelerate", "torch", "torchvision", "diffusers",
                    "transformers", "imageio", "tqdm"}


def requirements(name: str) -> set[str]:
    """Distribution names in a requirements file, following ``-r`` includes."""
    out = set()
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            out |= requirements(line[2:].strip())
        elif line:
            out.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower())
    return out


def own_lines(name: str) -> set[str]:
    """The file's own entries, without its includes."""
    lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / name).read_text().splitlines()]
    return {ln for ln in lines if ln and not ln.startswith("-r")}


def imports(path: Path, module_level_only: bool = False) -> list[ast.ImportFrom | ast.Import]:
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif module_level_only and isinstance(node, ast.Try):  # import guards at module level
            found += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def third_party(path: Path, module_level_only: bool = False) -> set[str]:
    names = set()
    for node in imports(path, module_level_only):
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        for top in ([a.name.split(".")[0] for a in node.names] if isinstance(node, ast.Import)
                    else [node.module.split(".")[0]]):
            if top not in sys.stdlib_module_names and top not in LOCAL and top != "__future__":
                names.add(top)
    return names


def test_every_import_of_the_tests_and_the_main_job_is_listed():
    listed = requirements("requirements-test.txt") | BY_COMMAND
    # the developer tools render from the real frontend: they also have what the browser test installs
    tools = listed | requirements("tests/comfy_support/requirements-browser.txt")
    files = [*(ROOT / "confiner_core").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "tools").glob("*.py")]
    missing = {}
    for f in files:
        for name in third_party(f):
            if DISTRIBUTION.get(name, name).lower() not in (tools if f.parent.name == "tools" else listed):
                missing.setdefault(name, []).append(str(f.relative_to(ROOT)))
    # ComfyUI's own modules are imported by test modules only inside the ComfyUI worker
    missing = {k: v for k, v in missing.items() if k not in {"comfy", "comfy_api", "folder_paths", "nodes"} | OPTIONAL}
    assert not missing, f"imports no requirements file lists: {missing}"


def test_lean_comfyui_install():
    lean = requirements("requirements.txt")
    assert not lean & NEVER_IN_COMFYUI, lean & NEVER_IN_COMFYUI
    assert "opencv-python-headless" in requirements("requirements-cli.txt")
    assert {"diffusers", "transformers"} <= requirements("requirements-diffusers.txt")


def test_pyproject_matches_the_requirements_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["dependencies"]) == own_lines("requirements.txt")
    extras = project["optional-dependencies"]
    assert set(extras["cli"]) == own_lines("requirements-cli.txt")
    assert set(extras["diffusers"]) == own_lines("requirements-diffusers.txt")
    assert set(extras["test"]) - {"comfyui-confiner[cli,diffusers]"} == own_lines("requirements-test.txt")


def test_comfy_registry_metadata_is_complete():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    comfy = pyproject["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon"):
        assert comfy.get(key), f"[tool.comfy] {key} is empty"
    assert comfy["includes"] and all((ROOT / p).is_dir() for p in comfy["includes"])
    icon = comfy["Icon"]
    assert icon.startswith("https://") and (ROOT / "docs" / icon.rsplit("/", 1)[1]).is_file()
    assert pyproject["project"]["urls"]["Repository"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyproject["project"]["version"])


def run_blocking(modules: set, body: str, *args: str) -> subprocess.CompletedProcess:
    """Python ``body`` in a fresh interpreter (in the repository root) where importing any of ``modules`` fails,
    as if they were not installed."""
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            f"        if name.split('.')[0] in {sorted(modules)!r}:\n"
            "            raise ImportError(f'{name} is blocked: not installed in this test')\n"
            "sys.meta_path.insert(0, Block())\n") + body
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True)


def reachable_core_modules() -> set[Path]:
    """confiner_core modules the nodes import at module level, transitively."""
    todo = list((ROOT / "nodes").glob("*.py"))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in imports(path, module_level_only=True):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            parts = (node.module or "").split(".") if node.module else []
            target = base.joinpath(*parts)
            candidates = [target.with_suffix(".py"), target / "__init__.py"]
            candidates += [target / f"{a.name}.py" for a in node.names]  # "from ..confiner_core import layout"
            todo += [c for c in candidates if c.is_file()]
    return seen


def test_nodes_import_nothing_comfyui_does_not_provide():
    provided = {"torch", "numpy", "einops", "safetensors", "comfy", "comfy_api", "latent_preview", "folder_paths",
                "node_helpers"}
    modules = reachable_core_modules()
    assert ROOT / "confiner_core" / "long.py" in modules and ROOT / "confiner_core" / "prompts.py" in modules
    outside = {str(p.relative_to(ROOT)): sorted(third_party(p, module_level_only=True) - provided) for p in modules}
    assert not any(outside.values()), outside
    # and for real: the core modules the nodes use import with cv2, diffusers, transformers, imageio, tqdm blocked
    names = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                   for p in modules if p.is_relative_to(ROOT / "confiner_core"))
    r = run_blocking({"cv2", "diffusers", "transformers", "imageio", "tqdm", "accelerate"},
                     f"import importlib\nfor m in {names!r}:\n    importlib.import_module(m)\n")
    assert r.returncode == 0, r.stderr[-2000:]


def test_main_job_needs_only_the_cli_requirements(tmp_path):
    """The README's first command installs requirements-cli.txt only: the main job must run with everything else
    the tests install (diffusers, transformers, accelerate, PyAV, pytest) made unimportable."""
    extra = requirements("requirements-test.txt") - requirements("requirements-cli.txt")
    blocked = {"av" if d == "av" else d.replace("-", "_") for d in extra}
    assert {"diffusers", "transformers", "accelerate", "av", "pytest"} <= blocked
    r = run_blocking(blocked, "import runpy\n"
                              "sys.argv = ['confiner_core', 'generate', '--out', sys.argv[1], '--frames', '8',\n"
                              "            '--height', '64', '--width', '64', '--quiet']\n"
                              "runpy.run_module('confiner_core', run_name='__main__')\n", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "out")) == ["frames.png", "report.json", "video.mp4"]


def test_checkpoints_without_the_diffusers_extra_are_refused_in_one_line_naming_the_install(tmp_path):
    """The README's quick start installs requirements-cli.txt: a run with checkpoints there is refused before
    anything loads (exit 2, the install that adds the packages), not a bare ModuleNotFoundError from a family's
    load; the library's load_experts says the same."""
    folders = [tmp_path / role for role in ("control", "spatial", "temporal")]
    for folder in folders:
        folder.mkdir()
    blocked = {"diffusers", "transformers", "accelerate"}
    r = run_blocking(blocked, "import runpy\n"
                              "sys.argv = ['confiner_core', 'generate', '--quiet', '--control', sys.argv[1],\n"
                              "            '--spatial', sys.argv[2], '--temporal', sys.argv[3], '--out', sys.argv[4]]\n"
                              "runpy.run_module('confiner_core', run_name='__main__')\n",
                     *map(str, folders), str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "error: --control: checkpoints need diffusers and transformers, which this Python does not have: pip install "
        '-r requirements-diffusers.txt (or ".[diffusers]")')
    assert not (tmp_path / "out").exists()
    r = run_blocking({"transformers"}, "from confiner_core.diffusers_backend import load_experts\n"
                                       "try:\n"
                                       "    load_experts(sys.argv[1], sys.argv[2], sys.argv[3])\n"
                                       "except ModuleNotFoundError as e:\n"
                                       "    print(e)\n", *map(str, folders))
    assert r.stdout.strip() == ("load_experts: checkpoints need transformers, which this Python does not have: pip "
                                'install -r requirements-diffusers.txt (or ".[diffusers]")'), r.stderr[-2000:]


def test_the_library_installs_as_a_wheel_of_confiner_core_alone(tmp_path):
    """`pip install ".[cli]"` (a researcher's way in): the wheel holds the library and its subpackages, not the
    ComfyUI nodes, tests or benchmarks, and python -m confiner_core runs from it. Built offline from a copy of the
    files the build reads (setuptools writes build/ beside its input)."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "confiner_core", src / "confiner_core", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"confiner_core"}
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "confiner_core").rglob("__init__.py")}
    assert packages == {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    ran = subprocess.run([sys.executable, "-m", "confiner_core", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, timeout=300)
    assert ran.returncode == 0 and "generate" in ran.stdout, ran.stderr[-2000:]


def comfy_checkout() -> Path:
    value = os.environ.get("COMFYUI_PATH", "").strip()
    if not value or not (Path(value) / "comfy_config").is_dir():
        pytest.skip("COMFYUI_PATH not set (or a ComfyUI without comfy_config): ComfyUI's own pyproject parser and "
                    "requirements are checked against a checkout")
    return Path(value)


@pytest.mark.comfyui
def test_comfyui_provides_everything_requirements_txt_lists():
    comfy = comfy_checkout()
    provided = {re.split(r"[<>=!~\[; ]", ln.strip(), maxsplit=1)[0].lower()
                for ln in (comfy / "requirements.txt").read_text().splitlines() if ln.strip() and ln[0] != "#"}
    assert requirements("requirements.txt") <= provided, requirements("requirements.txt") - provided


@pytest.mark.comfyui
def test_comfyuis_parser_reads_the_registry_metadata():
    comfy = comfy_checkout()
    code = ("import sys, json; sys.path.insert(0, sys.argv[1])\n"
            "from comfy_config import config_parser\n"
            "c = config_parser.extract_node_configuration(sys.argv[2])\n"
            "print(json.dumps({'id': c.tool_comfy.publisher_id, 'name': c.tool_comfy.display_name,\n"
            "  'icon': c.tool_comfy.icon, 'includes': c.tool_comfy.includes, 'deps': c.project.dependencies,\n"
            "  'comfyui': c.project.supported_comfyui_version, 'os': c.project.supported_os}))")
    r = subprocess.run([sys.executable, "-c", code, str(comfy), str(ROOT)], capture_output=True, text=True)
    if r.returncode and "No module named 'pydantic" in r.stderr:
        pytest.skip("ComfyUI's runtime packages are not installed (tests/comfy_support/requirements-comfyui.txt)")
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    c = json.loads(r.stdout)
    assert c["id"] == "confiner" and c["name"] == "ConFiner" and c["icon"].endswith("docs/icon.png")
    assert c["includes"] and c["comfyui"] == ">=0.3.64" and c["os"] == ["OS Independent"]
    assert set(c["deps"]) == own_lines("requirements.txt")


def test_importing_the_diffusers_backend_says_nothing():
    """Without torchvision, transformers said once per process that CLIP's and SigLIP's image processors fall back
    to PIL (diffusers names them at import): the only output a library user saw on importing the backend."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    done = subprocess.run([sys.executable, "-c", "import confiner_core.diffusers_backend"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "requires torchvision" not in done.stderr + done.stdout, done.stderr
