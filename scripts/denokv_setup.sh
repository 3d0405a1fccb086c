#!/usr/bin/env bash
# Builds the self-hosted Deno KV server `denokv` (crates.io) once and caches the binary outside the
# clone, at $PERFIT_CACHE/denokv-<version>/bin/denokv (default cache: ~/.cache/perfit, where CI also
# keeps the Python venvs). Idempotent: a working cached binary is left as it is and the script
# returns at once. Non-interactive; output goes to a log whose tail is printed on failure.
#
# The version is DENOKV_VERSION in scripts/denokv.ts. It is built with `--locked` (its published
# Cargo.lock), whose newest dependency (constant_time_eq 0.5.0) declares rust-version 1.95: Debian's
# rustc (1.63) is far too old, so rustup's toolchain is used; where rustup's default is older than
# that, the pinned toolchain is installed with rustup (minimal profile).
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -nE 's/^export const DENOKV_VERSION = "([^"]+)";.*/\1/p' scripts/denokv.ts)
[ -n "$version" ] || { echo "denokv_setup: no DENOKV_VERSION in scripts/denokv.ts" >&2; exit 1; }
msrv=1.95.0
cache="${PERFIT_CACHE:-$HOME/.cache/perfit}"
dest="$cache/denokv-$version"
if "$dest/bin/denokv" --help >/dev/null 2>&1; then
  echo "denokv ready: $dest/bin/denokv ($version, cached)"
  exit 0
fi
mkdir -p "$cache"

# A cargo whose rustc is at least $msrv: rustup's (~/.cargo/bin) before any other on PATH.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
rustc_version() { "$@" --version 2>/dev/null | sed -nE 's/^rustc ([0-9]+\.[0-9]+\.[0-9]+).*/\1/p'; }
cargo_cmd=()
if command -v cargo >/dev/null && ver_ge "$(rustc_version rustc)" "$msrv"; then
  cargo_cmd=(cargo)
elif command -v rustup >/dev/null; then
  echo "denokv_setup: rustc $(rustc_version rustc) < $msrv; installing toolchain $msrv with rustup"
  rustup toolchain install "$msrv" --profile minimal --no-self-update >/dev/null
  cargo_cmd=(rustup run "$msrv" cargo)
else
  echo "denokv_setup: denokv $version needs rustc >= $msrv and no rustup is installed" \
    "(found: $(rustc_version rustc || echo none)); the denokv tests cannot run here" >&2
  exit 1
fi

# Built into a staging root and moved into place at the end, so a half-built cache never exists.
# The target dir is kept between tries, so a retry after a dropped download resumes the build.
stage="$cache/denokv-$version.partial"
target="$cache/denokv-build-target"
log="$cache/denokv-$version-build.log"
rm -rf "$stage"
echo "denokv_setup: building denokv $version with $("${cargo_cmd[@]}" --version) (log: $log); ~10 min on 2 cores"
start=$(date +%s)
export CARGO_NET_RETRY=5 CARGO_TERM_PROGRESS_WHEN=never CARGO_TERM_COLOR=never
if ! nice -n 19 "${cargo_cmd[@]}" install denokv --version "$version" --locked --root "$stage" \
  --target-dir "$target" >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "denokv_setup: cargo install denokv $version failed (log: $log)" >&2
  exit 1
fi
"$stage/bin/denokv" --help >/dev/null
rm -rf "$dest"
mv "$stage" "$dest"
rm -rf "$target" # ~1 GB of build products; the binary is all that is kept
echo "denokv ready: $dest/bin/denokv ($version, built in $(($(date +%s) - start)) s)"
