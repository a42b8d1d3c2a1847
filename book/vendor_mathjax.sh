#!/usr/bin/env bash
# Re-create book/_static/mathjax/: the part of MathJax 3 (npm package mathjax, pinned below) that the
# book loads at runtime, so that its math renders offline (_config.yml: mathjax_path "mathjax/tex-chtml.js").
#   tex-chtml.js                      the combined component (TeX input with the default packages, CHTML output, menu)
#   a11y/assistive-mml.js             loaded by the menu at startup (its "assistive MathML" setting is on by default)
#   input/tex/extensions/*.js         loaded by the autoload package on first use of e.g. \boldsymbol, \cancel,
#                                     \color, \bbox, \braket, \ce (all-packages.js left out: never loaded)
#   output/chtml/fonts/woff-v2/       the CHTML fonts
#   LICENSE, VERSION
# Left out: the speech/explorer accessibility options of the right-click menu (a11y/explorer, sre: 4 MB),
# which a reader would have to switch on by hand; everything else is never requested by tex-chtml.js.
# Usage: bash book/vendor_mathjax.sh   (needs npm and network access to the npm registry)
set -euo pipefail

VERSION=3.2.2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/_static/mathjax"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "mathjax@$VERSION" >/dev/null)
tar -xzf "$tmp/mathjax-$VERSION.tgz" -C "$tmp"
src="$tmp/package/es5"
test -f "$src/tex-chtml.js" || { echo "mathjax@$VERSION: es5/tex-chtml.js not found" >&2; exit 1; }

rm -rf "$dest"
mkdir -p "$dest/a11y" "$dest/input/tex/extensions" "$dest/output/chtml/fonts"
cp "$tmp/package/LICENSE" "$src/tex-chtml.js" "$dest/"
cp "$src/a11y/assistive-mml.js" "$dest/a11y/"
cp "$src"/input/tex/extensions/*.js "$dest/input/tex/extensions/"
rm -f "$dest/input/tex/extensions/all-packages.js"
cp -r "$src/output/chtml/fonts/woff-v2" "$dest/output/chtml/fonts/"
echo "mathjax@$VERSION (npm), trimmed by book/vendor_mathjax.sh" > "$dest/VERSION"
echo "$dest: mathjax@$VERSION, $(du -sh "$dest" | cut -f1)"
