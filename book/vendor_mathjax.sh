#!/usr/bin/env bash
# Re-create book/_static/mathjax/: the part of MathJax 3 (npm package mathjax, pinned below) that the
# book loads at runtime, so that its math renders offline (_config.yml: mathjax_path "mathjax/tex-chtml.js").
#   tex-chtml.js                      the combined component: TeX input with the default packages, CHTML
#                                     output, the menu and the assistive MathML (all in this one file)
#   input/tex/extensions/*.js         loaded by the autoload package on first use of e.g. \boldsymbol, \cancel,
#                                     \color, \bbox, \braket, \ce (all-packages.js left out: never loaded)
#   output/chtml/fonts/woff-v2/       the CHTML fonts
#   LICENSE, VERSION
# Left out: what only the right-click menu can ask for, when a reader switches it on by hand (the speech and
# explorer accessibility options: a11y/, sre/, 4 MB; the SVG renderer: output/svg*). Nothing else is ever
# requested by tex-chtml.js (checked in Chromium: tests/browser.py reports any failed request).
# Usage: bash book/vendor_mathjax.sh   (needs npm and network access to the npm registry)
set -euo pipefail

VERSION=3.2.2
# sha512sum of the npm tarball mathjax-3.2.2.tgz (the registry's dist.integrity, in hex)
SHA512=06df9249553c7811b6ef30a155ec0e89c62ced7b1db78d2a9b8f94a47c97ee4d3f3bd36588f73ec7bee4d7f144b0fb2328f64626fb5164cd6f3be81e5b43a11b
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/_static/mathjax"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "mathjax@$VERSION" >/dev/null)
echo "$SHA512  $tmp/mathjax-$VERSION.tgz" | sha512sum --check --quiet - \
  || { echo "mathjax-$VERSION.tgz: sha512 differs from the pinned one" >&2; exit 1; }
tar -xzf "$tmp/mathjax-$VERSION.tgz" -C "$tmp"
src="$tmp/package/es5"
test -f "$src/tex-chtml.js" || { echo "mathjax@$VERSION: es5/tex-chtml.js not found" >&2; exit 1; }

rm -rf "$dest"
mkdir -p "$dest/input/tex/extensions" "$dest/output/chtml/fonts"
cp "$tmp/package/LICENSE" "$src/tex-chtml.js" "$dest/"
cp "$src"/input/tex/extensions/*.js "$dest/input/tex/extensions/"
rm -f "$dest/input/tex/extensions/all-packages.js"
cp -r "$src/output/chtml/fonts/woff-v2" "$dest/output/chtml/fonts/"
echo "mathjax@$VERSION (npm), trimmed by book/vendor_mathjax.sh" > "$dest/VERSION"
echo "$dest: mathjax@$VERSION, $(du -sh "$dest" | cut -f1)"
