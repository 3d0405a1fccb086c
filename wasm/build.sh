#!/usr/bin/env bash
# Builds wasm/perfit_kernels.wasm from wasm/src/lib.rs with Debian's rustc (1.63 + libstd-rust-dev-wasm32
# + lld-14; rustup cannot add the wasm32 target here, so /usr/bin/rustc is called explicitly). The wasm32
# target links with rust-lld, which Debian ships in lld-14: libstd-rust-dev-wasm32 only recommends it, so an
# install with --no-install-recommends leaves it out and rustc fails with "linker `rust-lld` not found".
# The output is byte-for-byte reproducible: no debug info, symbols stripped, paths remapped, one codegen unit.
#   wasm/build.sh          rebuild and replace the committed module
#   wasm/build.sh --check  rebuild into a temp file; exit 1 if it differs from the committed module
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rustc="${PERFIT_RUSTC:-/usr/bin/rustc}"
expected="rustc 1.63.0"
out="$here/perfit_kernels.wasm"

packages="rustc libstd-rust-dev-wasm32 lld-14"
if [[ ! -x "$rustc" ]]; then
  echo "error: $rustc not found; install it with: apt-get install -y $packages" >&2
  exit 2
fi
linker="${PERFIT_RUST_LLD:-$(dirname "$rustc")/rust-lld}"
if [[ ! -x "$linker" ]]; then
  echo "error: the wasm32 linker $linker is missing (Debian package lld-14); install it with: apt-get install -y $packages" >&2
  exit 2
fi
sysroot="$("$rustc" --print sysroot)"
if [[ ! -d "$sysroot/lib/rustlib/wasm32-unknown-unknown" ]]; then
  echo "error: the wasm32 standard library is missing (Debian package libstd-rust-dev-wasm32); install it with: apt-get install -y $packages" >&2
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
