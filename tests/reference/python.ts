/**
 * The Python a reference check runs: `$env` when set, else the venv a tests/reference/*_setup.sh script
 * made under tests/.tmp/<venv>; the first of them that imports `modules`, or null (the check is skipped).
 */
const ROOT = new URL("../..", import.meta.url).pathname;

export function referencePython(env: string, venv: string, modules: string): string | null {
  for (const p of [Deno.env.get(env), `${ROOT}tests/.tmp/${venv}/bin/python`]) {
    if (!p) continue;
    try {
      const r = new Deno.Command(p, { args: ["-c", `import ${modules}`], stdout: "null", stderr: "null" })
        .outputSync();
      if (r.success) return p;
    } catch { /* not there */ }
  }
  return null;
}
