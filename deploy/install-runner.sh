#!/usr/bin/env bash
# Install or upgrade bench-runner on an EC2 instance, from this checkout.
#
#   sudo deploy/install-runner.sh            # install, or upgrade in place
#   sudo RUNNER_EXTRAS=openai deploy/install-runner.sh   # also the openai client
#   DESTDIR=/tmp/root deploy/install-runner.sh   # stage under another root
#
# What it does, each step safe to repeat:
#   1. a virtualenv at /opt/bench-runner with this checkout's `.[runner]` only
#      (no Flask, no pymongo), plus the vendor clients RUNNER_EXTRAS names
#      (comma-separated: openai, anthropic; for --provider openai-compatible
#      and its presets, and --provider anthropic), every dependency at the version
#      deploy/runner-constraints.txt pins and from a wheel, so no dependency's
#      build code runs as root; a rerun upgrades it in place;
#   2. /etc/bench-runner/runner.env from deploy/runner.env.example, mode 0600,
#      only when there is none (an existing one is never touched);
#   3. bench-runner.service and bench-runner.timer into /etc/systemd/system;
#   4. on the real root with systemd running: daemon-reload and enable --now
#      the timer.
#
# DESTDIR (or ROOT) prefixes every path. The venv's scripts then name the
# prefixed interpreter, so a staged tree is for inspection and tests, not for
# copying elsewhere. PYTHON picks the interpreter (3.11 or newer).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="${DESTDIR:-${ROOT:-}}"
ROOT="${ROOT%/}"
VENV="$ROOT/opt/bench-runner"
ETC="$ROOT/etc/bench-runner"
ENV_FILE="$ETC/runner.env"
CONSTRAINTS="$SRC/deploy/runner-constraints.txt"
UNIT_DIR="$ROOT/etc/systemd/system"

say() { printf 'install-runner: %s\n' "$*"; }
die() { printf 'install-runner: error: %s\n' "$*" >&2; exit 1; }

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

[[ -f "$SRC/setup.cfg" && -d "$SRC/runner" ]] || die "run me from a bench-ingest checkout ($SRC has no setup.cfg/runner)"
[[ -f "$CONSTRAINTS" ]] || die "$CONSTRAINTS is missing: the pinned dependency versions ship with the checkout"
if [[ -z "$ROOT" && "$(id -u)" -ne 0 ]]; then
    die "installing to / needs root: sudo $0 (or DESTDIR=/some/dir $0 to stage)"
fi
EXTRAS="runner"
IFS=',' read -r -a wanted <<< "${RUNNER_EXTRAS:-}"
for extra in "${wanted[@]}"; do
    extra="${extra// /}"
    case "$extra" in
        "") ;;
        openai|anthropic) EXTRAS="$EXTRAS,$extra" ;;
        *) die "RUNNER_EXTRAS: unknown extra '$extra' (known: openai, anthropic; comma-separated)" ;;
    esac
done
PY="$(find_python)" || die "Python 3.11 or newer not found; install it (Amazon Linux 2023: dnf install -y python3.11) or set PYTHON=/path/to/python3.11"

# 1. The virtualenv. A venv whose interpreter is gone (OS upgrade) is rebuilt.
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
    say "upgrading the virtualenv at $VENV"
else
    say "creating a virtualenv at $VENV with $PY"
    "$PY" -m venv --clear "$VENV"
fi
# Pinned versions, wheels only: nothing a dependency ships is built or run as root here.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    --constraint "$CONSTRAINTS" --only-binary=:all: "$SRC[$EXTRAS]"
"$VENV/bin/bench-runner" --help >/dev/null || die "$VENV/bin/bench-runner does not start"
say "installed the extras $EXTRAS"
say "installed $("$VENV/bin/python" -c 'from importlib.metadata import version; print("bench-ingest", version("bench-ingest"))')"

# 2. The environment file: created once, never overwritten (it holds the key).
install -d -m 0750 "$ETC"
if [[ -e "$ENV_FILE" ]]; then
    say "keeping the existing $ENV_FILE"
    mode="$(stat -c %a "$ENV_FILE")"
    [[ "$mode" == 600 || "$mode" == 400 ]] || say "warning: $ENV_FILE has mode $mode; it holds a key: chmod 600 it"
else
    install -m 0600 "$SRC/deploy/runner.env.example" "$ENV_FILE"
    say "created $ENV_FILE (mode 0600): set INGEST_API_URL, INGEST_API_KEY and BENCHMARK_MODELS in it"
fi

# 3. The units.
install -d -m 0755 "$UNIT_DIR"
install -m 0644 "$SRC/deploy/bench-runner.service" "$SRC/deploy/bench-runner.timer" "$UNIT_DIR/"
say "installed bench-runner.service and bench-runner.timer into $UNIT_DIR"

# 4. Enable the timer, only on the real root of a machine that runs systemd.
if [[ -n "$ROOT" ]]; then
    say "staged under $ROOT: not touching systemd"
elif ! command -v systemctl >/dev/null 2>&1 || [[ ! -d /run/systemd/system ]]; then
    say "systemd is not running here: enable the timer yourself (systemctl enable --now bench-runner.timer)"
else
    systemctl daemon-reload
    systemctl enable --now bench-runner.timer
    say "bench-runner.timer enabled"
fi

cat <<EOF

Check it:
  systemctl list-timers bench-runner.timer     # when the next run starts
  sudo systemctl start bench-runner.service    # run once now (waits for it)
  journalctl -u bench-runner.service -n 50     # what the last runs said
  sudo BENCH_RUNNER_STATE_DIR=/var/lib/bench-runner \\
      /opt/bench-runner/bin/bench-runner outbox status   # results waiting for delivery
EOF
