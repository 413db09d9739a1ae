#!/usr/bin/env bash
# Installs what building and testing need beyond Rust: python3 with pip
# (used by `rsgi-wasm build -r requirements.txt` to resolve wheels).
set -euo pipefail
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "installing python3-pip (needed to resolve example requirements)" >&2
  if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3 python3-pip >/dev/null
  else
    echo "error: python3 with pip is required; install it with your package manager" >&2
    exit 1
  fi
fi
