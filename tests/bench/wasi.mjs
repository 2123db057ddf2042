// Runs a wasm32-wasip1 command (the engine bench built for wasm) in Node's V8,
// the engine Envoy embeds: `node tests/bench/wasi.mjs <file.wasm>`.
// BENCH_QUICK passes through; nothing else of the environment or the disk does.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import { argv, env, exit } from 'node:process';

if (argv.length < 3) {
  console.error('usage: node tests/bench/wasi.mjs <file.wasm>');
  exit(2);
}
const wasi = new WASI({
  version: 'preview1',
  args: ['engine'],
  env: env.BENCH_QUICK ? { BENCH_QUICK: env.BENCH_QUICK } : {},
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(argv[2]));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
