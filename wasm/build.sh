#!/usr/bin/env bash
# Builds wasm/perfit_kernels.wasm from wasm/src/lib.rs with Debian's rustc (1.63 + libstd-rust-dev-wasm32;
# rustup cannot add the wasm32 target here, so /usr/bin/rustc is called explicitly).
# The output is byte-for-byte reproducible: no debug info, symbols stripped, paths remapped, one codegen unit.
#   wasm/build.sh          rebuild and replace the committed module
#   wasm/build.sh --check  rebuild into a temp file; exit 1 if it differs from the committed module
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rustc="${PERFIT_RUSTC:-/usr/bin/rustc}"
expected="rustc 1.63.0"
out="$here/perfit_kernels.wasm"

if [[ ! -x "$rustc" ]]; then
  echo "error: $rustc not found; install it with: apt-get install -y rustc libstd-rust-dev-wasm32" >&2
  exit 2
fi
version="$("$rustc" --version | cut -d' ' -f1-2)"
if [[ "$version" != "$expected" ]]; then
  echo "warning: $version differs from $expected that built the committed module; bytes may differ" >&2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Relative paths plus --remap-path-prefix keep the checkout location out of the module.
(cd "$here" && "$rustc" --edition 2021 --target wasm32-unknown-unknown --crate-type cdylib --crate-name perfit_kernels \
  -C opt-level=3 -C panic=abort -C target-feature=+simd128 -C codegen-units=1 -C lto=fat \
  -C debuginfo=0 -C strip=symbols --remap-path-prefix="$here=." \
  -o "$tmp/perfit_kernels.wasm" src/lib.rs)

if [[ "${1:-}" == "--check" ]]; then
  if cmp -s "$tmp/perfit_kernels.wasm" "$out"; then
    echo "ok: $out matches a fresh build ($(wc -c <"$out") bytes)"
    exit 0
  fi
  echo "error: $out differs from a fresh build of wasm/src/lib.rs; run wasm/build.sh and commit the result" >&2
  exit 1
fi

cp "$tmp/perfit_kernels.wasm" "$out"
chmod 644 "$out"
echo "built $out ($(wc -c <"$out") bytes)"
