#!/usr/bin/env bash
# System packages the test suite needs: PostgreSQL (tests/test_tracking_server.py runs its own
# initdb/pg_ctl) and Chromium (tests/test_ui.py renders the MLflow UI headless). Installed with
# apt-get as root or through sudo; elsewhere a clear message names the packages and the command.
# Used by `make test` (the README's command) and `.ci/run`, so both need the same machine.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${missing[*]}"
if ! command -v apt-get >/dev/null; then
  echo "[system-deps] the tests need: ${missing[*]} (no apt-get here: install them with this system's package manager)" >&2
  exit 2
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo)
else
  echo "[system-deps] the tests need: ${missing[*]}; install them as root: sudo sh -c '$cmd'" >&2
  exit 2
fi
echo "[system-deps] installing ${missing[*]} (apt-get)"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
