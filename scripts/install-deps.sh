#!/usr/bin/env bash
# Installs what the build and tests need; does nothing when all is present. Debian packages
# through apt-get, and playwright-core for the browser test through npm, at the version pinned
# in tests/browser/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config
  libfmt-dev catch2 libbenchmark-dev nlohmann-json3-dev libcli11-dev
  libopenblas-dev libsentencepiece-dev sentencepiece libxxhash-dev
  libboost-dev
  chromium  # the browser test (tests/browser)
)
command -v npm >/dev/null || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# playwright-core drives Debian's chromium (no browser download of its own).
pinned=$(node -p "require('./tests/browser/package-lock.json').packages['node_modules/playwright-core'].version")
installed=$(node -p "try { require('./tests/browser/node_modules/playwright-core/package.json').version } catch { '' }")
if [ "$installed" != "$pinned" ]; then
  echo "installing: playwright-core $pinned (tests/browser/node_modules)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi
