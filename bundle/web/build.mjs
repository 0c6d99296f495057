// Assembles the static page into one folder: node build.mjs [OUT] (default: dist).
// OUT gets index.html, style.css, src/*.js and, in OUT/ort/, the onnxruntime-web files the page loads (the
// WebAssembly build and the WebGPU build, each an .mjs with its .wasm), from node_modules (npm ci first). The
// model goes into OUT/model/ (scripts/export_edge.py --output_dir OUT/model; `make web` does both).
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] || join(here, 'dist'));
const ortDist = join(here, 'node_modules', 'onnxruntime-web', 'dist');

export const ORT_FILES = [
  'ort.wasm.min.mjs',
  'ort-wasm-simd-threaded.mjs',
  'ort-wasm-simd-threaded.wasm',
  'ort.webgpu.min.mjs',
  'ort-wasm-simd-threaded.asyncify.mjs',
  'ort-wasm-simd-threaded.asyncify.wasm',
];

if (!existsSync(ortDist)) {
  console.error(`${ortDist} is missing: run "npm ci" in ${here} first`);
  process.exit(1);
}
const pinned = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8')).dependencies['onnxruntime-web'];
const installed = JSON.parse(readFileSync(join(ortDist, '..', 'package.json'), 'utf8')).version;
if (pinned !== installed) {
  console.error(`node_modules has onnxruntime-web ${installed}, package.json pins ${pinned}: run "npm ci"`);
  process.exit(1);
}
mkdirSync(join(out, 'src'), { recursive: true });
mkdirSync(join(out, 'ort'), { recursive: true });
mkdirSync(join(out, 'model'), { recursive: true });
for (const f of ['index.html', 'style.css']) copyFileSync(join(here, f), join(out, f));
for (const f of readdirSync(join(here, 'src'))) if (f.endsWith('.js')) copyFileSync(join(here, 'src', f), join(out, 'src', f));
for (const f of ORT_FILES) copyFileSync(join(ortDist, f), join(out, 'ort', f));
console.log(`page built in ${out} (onnxruntime-web ${installed}); the model goes in ${join(out, 'model')}`);
