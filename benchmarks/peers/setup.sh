#!/usr/bin/env bash
# (Re)build the peers' virtual environments from nothing, one per peer, under
# benchmarks/.peers/<peer>/, so that their pins can never clash with each other
# or with pet's own environment.
#
#   bash benchmarks/peers/setup.sh                  # every peer, exact pins
#   bash benchmarks/peers/setup.sh opendp           # one peer, exact pins
#   bash benchmarks/peers/setup.sh --resolve        # fresh resolve of the top-level
#                                                   # specs; rewrites requirements-*.txt
#
# Exact-pin mode installs requirements-<peer>.txt with --no-deps (every package is
# pinned there) and then runs `pip check`. Either mode refuses an environment that
# holds a CUDA build (any nvidia-* package, or a torch that is not the +cpu build).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)/.peers"
PYTHON="${PYTHON:-python3.11}"

RESOLVE=0
PEERS=()
for arg in "$@"; do
  case "$arg" in
    --resolve) RESOLVE=1 ;;
    opendp|smartnoise|mbi) PEERS+=("$arg") ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (expected opendp, smartnoise, mbi or --resolve)" >&2; exit 2 ;;
  esac
done
[ ${#PEERS[@]} -eq 0 ] && PEERS=(opendp smartnoise mbi)

# The only torch allowed is the CPU build 2.13.0 (a wheel kept on local disk here);
# give pip that folder explicitly when it exists.
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)

# Top-level specs of a fresh resolve, in install order (one pip call per line).
specs() {
  case "$1" in
    # pandas: mbi's Dataset.df (used by ContingencyTable.synthesize) imports it,
    # but neither opendp[mbi] nor mbi declares it.
    opendp) echo "opendp[mbi]==0.16.* pandas" ;;
    # torch first, from the CPU wheel, so that opacus's bare `torch>=1.3` is already
    # satisfied and pip never picks a CUDA build.
    smartnoise) echo "torch==2.13.0"; echo "smartnoise-synth==1.0.8" ;;
    # Private-PGM's current release; its MST and AIM are in private_pgm.py.
    mbi) echo "mbi==2.0.* pyarrow" ;;
  esac
}

check_cpu_only() {
  local py="$1"
  if "$py" -m pip list --format=freeze 2>/dev/null | grep -qi '^nvidia-'; then
    echo "refusing: a CUDA package was installed in $(dirname "$(dirname "$py")")" >&2
    exit 1
  fi
  if "$py" -m pip list --format=freeze 2>/dev/null | grep -i '^torch==' | grep -vq '+cpu'; then
    echo "refusing: torch is not the CPU build" >&2
    exit 1
  fi
}

build() {
  local peer="$1" env="$ROOT/$1" req="$HERE/requirements-$1.txt"
  echo "== $peer: building $env"
  rm -rf "$env"
  mkdir -p "$ROOT"
  "$PYTHON" -m venv "$env"
  local py="$env/bin/python"
  if [ "$RESOLVE" -eq 1 ] || [ ! -f "$req" ]; then
    while read -r line; do
      # shellcheck disable=SC2086
      "$py" -m pip install -q "${FIND_LINKS[@]}" $line
    done < <(specs "$peer")
    check_cpu_only "$py"
    {
      echo "# Exact environment of the '$peer' peer, written by setup.sh --resolve"
      echo "# from: $(specs "$peer" | tr '\n' ' ')"
      echo "# python: $("$py" -c 'import platform; print(platform.python_version())')"
      "$py" -m pip freeze --all | grep -v -i '^pip==' | LC_ALL=C sort -f
    } > "$req"
    echo "   wrote $req"
  else
    "$py" -m pip install -q --no-deps "${FIND_LINKS[@]}" -r "$req"
    check_cpu_only "$py"
  fi
  "$py" -m pip check
  "$py" "$HERE/run_peer.py" --peer "$peer" --versions
}

for peer in "${PEERS[@]}"; do
  build "$peer"
done
