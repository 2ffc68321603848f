"""The pack's templates (``example_workflows/<name>.json``) by name, as the tests open them: the names the tool that
writes them gives (the template browser titles them by their file names, so the names are the artists' words)."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "build_example_workflows", Path(__file__).resolve().parents[2] / "tools" / "build_example_workflows.py")
_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tool)

BASIC, LONG_SD, COMPARE = _tool.BASIC, _tool.LONG_SD, _tool.COMPARE
WAN_QWEN, WAN_FLUX, SD_BRIDGE, LONG_WAN, A14B = _tool.WAN_QWEN, _tool.WAN_FLUX, _tool.SD_BRIDGE, _tool.LONG_WAN, _tool.A14B
