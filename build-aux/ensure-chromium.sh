#!/bin/sh
# Make sure /usr/bin/chromium exists for the dashboard's browser tests (tests/serve/
# test_dashboard.py drive it with Playwright; no browser is downloaded). Installs Debian's
# chromium package when running as root; otherwise says what to run and fails.
set -eu

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    echo "ensure-chromium: $CHROMIUM is missing; installing Debian's chromium package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
    if [ ! -x "$CHROMIUM" ]; then
        echo "ensure-chromium: installed the chromium package, but $CHROMIUM is still missing" >&2
        exit 1
    fi
    echo "ensure-chromium: $("$CHROMIUM" --version 2>/dev/null || echo chromium) installed" >&2
    exit 0
fi

cat >&2 <<MSG
ensure-chromium: $CHROMIUM is missing, and the dashboard's browser tests need it.
Install Debian's chromium package as root, then run the tests again:

    sudo env DEBIAN_FRONTEND=noninteractive sh -c 'apt-get update -qq && apt-get install -y -qq chromium'
MSG
exit 1
