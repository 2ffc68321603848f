#!/usr/bin/env bash
# Puts what bench/comfy_benchmark.py needs on the GPU machine into .comfy_bench/ of this checkout, a folder git
# ignores (.git/info/exclude), so the device tool carries it with the working tree (`carry: [".comfy_bench"]`):
#   .comfy_bench/ComfyUI                      a ComfyUI checkout (tests and git data left out)
#   .comfy_bench/ComfyUI-AnimateDiff-Evolved  an AnimateDiff-Evolved checkout
#   .comfy_bench/whl/                         wheels of what ComfyUI imports and the device image lacks:
#                                             torchsde (+ trampoline), imported by comfy.k_diffusion.sampling, and
#                                             av, imported by comfy_api; everything else ComfyUI needs for a
#                                             headless run is in the image (bench/comfy_benchmark.py says which)
# Nothing here is committed: ComfyUI and ADE are GPL-3.0 and fetched code stays out of the repository.
#
# usage: bench/prepare_comfy_carry.sh [COMFYUI_CHECKOUT] [ADE_CHECKOUT]
#        (defaults: ~/.cache/confiner/comfyui-0.8.0 and ~/.cache/confiner/ade, made by
#        tests/comfy_support/extract_snapshot.sh)
set -euo pipefail
comfy=${1:-$HOME/.cache/confiner/comfyui-0.8.0}
ade=${2:-$HOME/.cache/confiner/ade}
root=$(git rev-parse --show-toplevel)
dest=$root/.comfy_bench
exclude=$(git -C "$root" rev-parse --path-format=absolute --git-path info/exclude)
[ -f "$comfy/nodes.py" ] || { echo "no ComfyUI checkout at $comfy" >&2; exit 2; }
[ -f "$ade/__init__.py" ] || { echo "no AnimateDiff-Evolved checkout at $ade" >&2; exit 2; }
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.comfy_bench/' "$exclude" 2>/dev/null || echo '/.comfy_bench/' >> "$exclude"

rm -rf "$dest"
mkdir -p "$dest/ComfyUI" "$dest/ComfyUI-AnimateDiff-Evolved" "$dest/whl"
copy() {  # source tree -> destination, without git data, caches, test suites, documentation, frontend files and
        # ComfyUI's API nodes (the benchmark boots with --disable-api-nodes)
    tar -C "$1" --exclude=.git --exclude=__pycache__ --exclude='*.pyc' --exclude=./tests --exclude=./tests-unit \
        --exclude=./documentation --exclude=./docs --exclude=./web --exclude=./script_examples \
        --exclude=./comfy_api_nodes -cf - . | tar -C "$2" -xf -
}
copy "$comfy" "$dest/ComfyUI"
copy "$ade" "$dest/ComfyUI-AnimateDiff-Evolved"

# the device's python3 is CPython 3.12 on x86-64 (device README: carried wheels)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dest/whl" torchsde==0.2.6 trampoline==0.1.2 av==18.1.0

echo "prepared $dest:"
du -sh "$dest"/* | sed 's/^/  /'
tracked=$(git -C "$root" ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -sb "$dest" | cut -f1)
echo "travelling: $(( (tracked + carried) / 1048576 )) MiB of the device tool's 64 MiB (tracked files + .comfy_bench)"
