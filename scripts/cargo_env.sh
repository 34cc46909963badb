# Sourced by the scripts: reuse a cargo target directory outside the clone
# (/work/target or ~/.cache/ember/target) unless CARGO_TARGET_DIR is set.
if [[ -z ${CARGO_TARGET_DIR:-} ]]; then
  for d in /work/target "$HOME/.cache/ember/target"; do
    if [[ -d $d && -w $d ]]; then export CARGO_TARGET_DIR=$d; break; fi
  done
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ember/target}
fi
