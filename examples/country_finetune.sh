#!/usr/bin/env bash
# Country fine-tuning on synthetic data, end to end: a global model trained on German and
# American scenes at a German site, fine-tuned at a Japanese site on Japanese scenes (left-hand
# traffic, other signs) and at an Indian site on Indian scenes (left-hand traffic, mostly
# unmarked edges, two-wheelers, a new class: auto-rickshaw), each four ways: no forgetting
# control, distillation from the frozen global model (weight 1), distillation plus L2-SP, and
# distillation at weight 4. Then every model
# on the country's held-out frames (the gain) and on the global held-out frames (the
# forgetting), joined into side-by-side tables with `percept compare`.
#
#   cargo build --release && bash examples/country_finetune.sh
#
# On 2 CPU cores this takes about 45 minutes. Everything lands in runs/example/ (OUT=...
# changes that); the tables are runs/example/tables/*/compare.md. Set STEPS_GLOBAL,
# STEPS_FINETUNE, TRAIN_FRAMES, COUNTRY_FRAMES and VAL_FRAMES for a longer or shorter run.
set -euo pipefail
cd "$(dirname "$0")/.."

percept=${PERCEPT:-target/release/percept}
out=${OUT:-runs/example}
steps_global=${STEPS_GLOBAL:-800}
steps_finetune=${STEPS_FINETUNE:-300}
train_frames=${TRAIN_FRAMES:-1600}
country_frames=${COUNTRY_FRAMES:-800}
val_frames=${VAL_FRAMES:-200}
size=(--width 256 --height 160)

if [ ! -x "$percept" ]; then
  echo "no $percept: build it with \`cargo build --release\` (or set PERCEPT)" >&2
  exit 1
fi
if [ -e "$out/runs" ]; then
  echo "$out/runs exists: this example starts from nothing; remove $out or set OUT" >&2
  exit 1
fi

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "synthetic countries"
# The American frames may also be processed at German sites (their steward's policy); every
# other country's frames stay in the country.
"$percept" synth --country DE --out "$out/synth-de" --train "$train_frames" --val "$val_frames" "${size[@]}" --seed 1
"$percept" synth --country US --processing-regions US,DE --out "$out/synth-us" --train "$train_frames" --val "$val_frames" "${size[@]}" --seed 2
"$percept" synth --country JP --out "$out/synth-jp" --train "$country_frames" --val "$val_frames" "${size[@]}" --seed 3
"$percept" synth --country IN --out "$out/synth-in" --train "$country_frames" --val "$val_frames" "${size[@]}" --seed 4

step "global model: DE + US at a German site"
"$percept" train --config configs/example-global.toml --set "runs_dir=\"$out/runs\"" \
  --set "data.datasets=[\"$out/synth-de\", \"$out/synth-us\"]" --set "train.steps=$steps_global"
global="$out/runs/global/checkpoints/final.safetensors"

evals="$out/evals"
mkdir -p "$evals"
# The global held-out frames are scored at a German site (the models' weights travel there).
forgetting() { # model name
  "$percept" eval --model "$1" --data "$out/synth-de" --site DE --out "$evals/$2-de.json"
  "$percept" eval --model "$1" --data "$out/synth-us" --site DE --out "$evals/$2-us.json"
}
forgetting "$global" global

for country in JP IN; do
  lower=$(echo "$country" | tr 'A-Z' 'a-z')
  for variant in plain distill distill-l2sp distill4; do
    step "fine-tune $country: $variant"
    extra=()
    case $variant in
      distill) extra=(--set finetune.distillation.weight=1.0) ;;
      distill-l2sp) extra=(--set finetune.distillation.weight=1.0 --set finetune.l2sp=0.01) ;;
      distill4) extra=(--set finetune.distillation.weight=4.0) ;;
    esac
    name="ft-$lower-$variant"
    "$percept" finetune --base "$global" --config configs/example-finetune.toml \
      --set "runs_dir=\"$out/runs\"" --set "name=\"$name\"" --set "site.region=\"$country\"" \
      --set "site.name=\"site-$lower\"" --set "finetune.profile=\"$country\"" \
      --set "data.datasets=[\"$out/synth-$lower\"]" --set "train.steps=$steps_finetune" "${extra[@]}"
    model="$out/runs/$name/checkpoints/final.safetensors"
    "$percept" eval --model "$model" --data "$out/synth-$lower" --out "$evals/$name-$lower.json"
    forgetting "$model" "$name"
  done
  # The global model on the country's frames, as the fine-tunes started from it: its class
  # rows mapped to the country's list (`percept finetune` writes that file when the lists
  # differ; for JP they are the same list).
  before="$out/runs/ft-$lower-plain/before-after/base-as-$lower.safetensors"
  [ -e "$before" ] || before="$global"
  "$percept" eval --model "$before" --data "$out/synth-$lower" --site "$country" --out "$evals/global-$lower.json"
done

step "tables"
tables="$out/tables"
labels=(--label global --label "fine-tuned" --label "+ distillation" --label "+ distillation + L2-SP"
  --label "+ distillation x4")
for country in jp in; do
  "$percept" compare --out "$tables/$country-gain" "${labels[@]}" "$evals/global-$country.json" \
    "$evals/ft-$country-plain-$country.json" "$evals/ft-$country-distill-$country.json" \
    "$evals/ft-$country-distill-l2sp-$country.json" "$evals/ft-$country-distill4-$country.json"
  for held in de us; do
    "$percept" compare --out "$tables/$country-forgetting-$held" "${labels[@]}" "$evals/global-$held.json" \
      "$evals/ft-$country-plain-$held.json" "$evals/ft-$country-distill-$held.json" \
      "$evals/ft-$country-distill-l2sp-$held.json" "$evals/ft-$country-distill4-$held.json"
  done
done
"$percept" inspect "$out/runs/ft-in-distill/checkpoints/final.safetensors"
step "done: tables in $tables"
