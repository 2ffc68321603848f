#!/usr/bin/env bash
# Extract the work tree of a (bare) git snapshot, file by file, into a destination directory.
#
# Usage: extract_snapshot.sh GIT_DIR [DEST [REV]]
#
#   GIT_DIR  a bare git directory of a ComfyUI snapshot, or a repo's .git
#   DEST     destination directory (created; keep it OUTSIDE this repository: ComfyUI is GPL-3.0). Default: the
#            per-user cache folder that .ci/run looks in,
#            ${XDG_CACHE_HOME:-$HOME/.cache}/confiner/comfyui-<version>, <version> from the snapshot's
#            comfyui_version.py
#   REV      revision to extract (default HEAD)
#
# `git archive` aborts on the first blob that is missing from a partial snapshot
# (ComfyUI: comfy/text_encoders/llama_tokenizer/tokenizer.json), so this walks
# `git ls-tree -r` and writes each blob with `git cat-file`, skipping (and reporting)
# blobs that cannot be read. Symlinks are recreated; submodules (commit entries) are skipped.
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 GIT_DIR [DEST [REV]]" >&2
    exit 2
fi
GIT_DIR_ARG=$1
DEST=${2:-}
REV=${3:-HEAD}

if ! git --git-dir="$GIT_DIR_ARG" rev-parse --verify -q "$REV^{commit}" >/dev/null; then
    echo "error: $GIT_DIR_ARG has no commit $REV" >&2
    exit 1
fi
if [ -z "$DEST" ]; then
    version=$(git --git-dir="$GIT_DIR_ARG" show "$REV:comfyui_version.py" 2>/dev/null \
              | sed -n 's/^__version__ *= *["'"'"']\([^"'"'"']*\)["'"'"'].*/\1/p')
    if [ -z "$version" ]; then
        echo "error: no comfyui_version.py in $GIT_DIR_ARG@$REV to name the folder; give DEST" >&2
        exit 2
    fi
    DEST="${XDG_CACHE_HOME:-$HOME/.cache}/confiner/comfyui-$version"
fi
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

ok=0; skipped=0; skipped_list=()
# -z: NUL-separated, so paths with spaces/odd characters survive.
while IFS= read -r -d '' entry; do
    meta=${entry%%$'\t'*}
    path=${entry#*$'\t'}
    read -r mode type sha <<<"$meta"
    [ "$type" = "blob" ] || continue          # skip submodules ("commit")
    out="$DEST/$path"
    mkdir -p "$(dirname "$out")"
    if [ "$mode" = "120000" ]; then
        if target=$(git --git-dir="$GIT_DIR_ARG" cat-file blob "$sha" 2>/dev/null); then
            rm -f "$out"; ln -s "$target" "$out"; ok=$((ok+1))
        else
            skipped=$((skipped+1)); skipped_list+=("$path")
        fi
        continue
    fi
    if git --git-dir="$GIT_DIR_ARG" cat-file blob "$sha" >"$out.tmp.$$" 2>/dev/null; then
        mv -f "$out.tmp.$$" "$out"
        [ "$mode" = "100755" ] && chmod +x "$out"
        ok=$((ok+1))
    else
        rm -f "$out.tmp.$$"
        skipped=$((skipped+1)); skipped_list+=("$path")
    fi
done < <(git --git-dir="$GIT_DIR_ARG" ls-tree -r -z "$REV")

commit=$(git --git-dir="$GIT_DIR_ARG" rev-parse "$REV^{commit}")
echo "$commit" >"$DEST/.snapshot_commit"
echo "extracted $ok files from $GIT_DIR_ARG@$commit to $DEST; skipped $skipped"
for p in "${skipped_list[@]+"${skipped_list[@]}"}"; do echo "  skipped (blob unavailable): $p"; done
exit 0
