#!/usr/bin/env bash
# The standard R-D benchmark on the 30 Urban100 images in ../shared/data/urban100.
#
#   benchmarks/run_urban100.sh            standard grid, all 30 images (91 min on 2 CPU cores with --jobs 2)
#   benchmarks/run_urban100.sh --quick    CI-sized: 3 images, grid `quick`
#   benchmarks/run_urban100.sh --limit N  standard grid on the first N images only
#   benchmarks/run_urban100.sh --reuse    take the classic and bicubic rows from the committed
#                                         benchmarks/results/urban100/results.csv (`tadm bench --reuse`:
#                                         one of each is re-measured and must match), compute the rest
#
# Work and its resumable cache go to runs/bench-urban100[-quick] (ignored by git):
# an interrupted run picks up where it stopped when started again. The standard
# run then copies its reports (results.csv, one JSON per curve, bdrate.json/.md,
# rd.png, summary.md) to benchmarks/results/urban100/, which is committed and
# which the README shows. Extra arguments go to `tadm bench` (e.g. --jobs 2).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${URBAN100:-../shared/data/urban100}
if [ ! -d "$DATA" ]; then
  echo "run_urban100: $DATA not found (set URBAN100=DIR)" >&2
  exit 2
fi
TADM=tadm
[ -x .venv/bin/tadm ] && TADM=.venv/bin/tadm

GRID=standard
WORK=runs/bench-urban100
PUBLISH=benchmarks/results/urban100
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) GRID=quick; WORK=runs/bench-urban100-quick; PUBLISH=""; EXTRA+=(--limit 3) ;;
    --limit) EXTRA+=(--limit "$2"); PUBLISH=${PUBLISH:+$PUBLISH-first$2}; shift ;;  # same cache as the full run
    --reuse) EXTRA+=(--reuse benchmarks/results/urban100/results.csv) ;;
    *) EXTRA+=("$1") ;;
  esac
  shift
done

"$TADM" bench "$DATA" --grid "$GRID" --lr-codecs auto,png,webp,jxl --jobs 1 -o "$WORK" "${EXTRA[@]}"

if [ -n "$PUBLISH" ]; then
  mkdir -p "$PUBLISH"
  rm -f "$PUBLISH"/*.json "$PUBLISH"/*.md "$PUBLISH"/*.csv "$PUBLISH"/*.png
  cp "$WORK"/*.json "$WORK"/*.md "$WORK"/results.csv "$WORK"/rd.png "$PUBLISH"/
  echo "$PUBLISH/summary.md"
fi
