// The committed wasm/perfit_kernels.wasm is exactly what wasm/build.sh makes from wasm/src/lib.rs.
// Needs Debian's rustc 1.63 + libstd-rust-dev-wasm32 + lld-14; ignored where /usr/bin/rustc is absent
// unless PERFIT_REQUIRE_RUSTC=1 (CI sets it so a missing toolchain fails instead of skipping).
import assert from "node:assert/strict";

const hasRustc = (() => {
  try {
    return Deno.statSync("/usr/bin/rustc").isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "kernels build: wasm/build.sh --check reproduces the committed module byte for byte",
  ignore: !hasRustc && Deno.env.get("PERFIT_REQUIRE_RUSTC") !== "1",
}, async () => {
  const script = new URL("../wasm/build.sh", import.meta.url).pathname;
  const { code, stdout, stderr } = await new Deno.Command("bash", { args: [script, "--check"] }).output();
  const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  assert.equal(code, 0, text);
  assert.match(text, /matches a fresh build/);
});

Deno.test({
  name: "kernels build: a missing wasm32 linker is reported with the Debian package that holds it",
  ignore: !hasRustc && Deno.env.get("PERFIT_REQUIRE_RUSTC") !== "1",
}, async () => {
  const script = new URL("../wasm/build.sh", import.meta.url).pathname;
  const { code, stderr } = await new Deno.Command("bash", {
    args: [script, "--check"],
    env: { PERFIT_RUST_LLD: "/nonexistent/rust-lld" },
  }).output();
  const text = new TextDecoder().decode(stderr);
  assert.equal(code, 2, text);
  assert.match(text, /linker \/nonexistent\/rust-lld is missing \(Debian package lld-14\)/);
  assert.match(text, /apt-get install -y rustc libstd-rust-dev-wasm32 lld-14/);
});
