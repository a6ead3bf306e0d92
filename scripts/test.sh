#!/usr/bin/env bash
# Set up (once) and run the test suite. Extra arguments go to pytest.
# The browser tests (tests/browser) drive the app in headless Chromium: it is installed here with
# apt-get when /usr/bin/chromium is missing (set CHROMIUM=/path/to/chrome to use another).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev

ensure_chromium() {
  if [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; then return 0; fi
  if [ -x /usr/bin/chromium ]; then return 0; fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "error: the browser tests need Chromium (/usr/bin/chromium) and this user cannot" \
           "install it (not root, no sudo). Install it (apt-get install -y chromium) or set" \
           "CHROMIUM=/path/to/chromium." >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: the browser tests need Chromium (/usr/bin/chromium) and apt-get is not" \
         "available to install it. Install Chromium, or set CHROMIUM=/path/to/chromium." >&2
    return 1
  fi
  echo "Installing Chromium for the browser tests (apt-get install -y chromium)..."
  if ! { $sudo apt-get update -qq && \
         $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
       >/tmp/finetune-chromium-install.log 2>&1 || [ ! -x /usr/bin/chromium ]; then
    tail -n 20 /tmp/finetune-chromium-install.log >&2
    echo "error: could not install Chromium with apt-get (log above and in" \
         "/tmp/finetune-chromium-install.log); the browser tests need it. Install it by hand," \
         "or set CHROMIUM=/path/to/chromium." >&2
    return 1
  fi
}
ensure_chromium

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
