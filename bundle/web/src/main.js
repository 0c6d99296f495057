// The page: loads the model (model/model.json and its ONNX file), reads a NIfTI image, segments the chosen
// structure with onnxruntime-web (WebGPU when available, else WebAssembly), shows it and saves the label map.
// Everything it loads comes from this server: onnxruntime's .mjs/.wasm files from ../ort/, the model from
// ../model/.

import { gzip, outputName, readNifti, writeNiftiLabels } from './nifti.js';
import { modelFile, readManifest, segment } from './pipeline.js';
import { PLANES, SliceViewer } from './viewer.js';

const ORT_DIR = new URL('../ort/', import.meta.url).href;
const MODEL_DIR = new URL('../model/', import.meta.url).href;

const $ = (id) => document.getElementById(id);
const state = { manifest: null, runtime: null, image: null, fileName: null, result: null };
// what the page measured, for the tests and for anyone reading the console
window.segone = state;

function setStatus(text, kind = 'info') {
  $('status').textContent = text;
  $('status').className = kind;
  document.body.dataset.state = kind;
}

async function sha256Hex(bytes) {
  if (!(globalThis.crypto && crypto.subtle)) return null;
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

function configureOrt(ort) {
  ort.env.wasm.wasmPaths = ORT_DIR;
  ort.env.wasm.proxy = false;
  // threads need cross-origin isolation (SharedArrayBuffer); a plain static server gives one thread
  ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.logLevel = 'warning';
}

async function webgpuAvailable() {
  try {
    return Boolean(navigator.gpu && (await navigator.gpu.requestAdapter()));
  } catch {
    return false;
  }
}

/** An onnxruntime session on the preferred backend; WebGPU falls back to WebAssembly when it fails. */
async function createRuntime(modelBytes, preference) {
  const errors = [];
  if (preference !== 'wasm' && (await webgpuAvailable())) {
    try {
      const ort = await import(`${ORT_DIR}ort.webgpu.min.mjs`);
      configureOrt(ort);
      const session = await ort.InferenceSession.create(modelBytes, { executionProviders: ['webgpu'] });
      return { ort, session, backend: 'webgpu' };
    } catch (e) {
      errors.push(`WebGPU: ${e.message || e}`);
      console.warn('WebGPU session failed, using WebAssembly', e);
    }
  } else if (preference === 'webgpu') {
    errors.push('WebGPU: not available in this browser');
  }
  const ort = await import(`${ORT_DIR}ort.wasm.min.mjs`);
  configureOrt(ort);
  const session = await ort.InferenceSession.create(modelBytes, { executionProviders: ['wasm'] });
  return { ort, session, backend: 'wasm', fallback: errors.join('; ') };
}

async function loadModel() {
  const variant = $('variant').value;
  const preference = $('backend').value;
  setStatus(`loading the ${variant} model…`, 'busy');
  const file = modelFile(state.manifest, variant);
  const response = await fetch(MODEL_DIR + file.name);
  if (!response.ok) throw new Error(`could not load ${file.name}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (file.sha256) {
    const digest = await sha256Hex(bytes);
    if (digest && digest !== file.sha256) throw new Error(`${file.name}: sha256 ${digest} is not model.json's ${file.sha256}`);
  }
  const t0 = performance.now();
  state.runtime = await createRuntime(bytes, preference);
  state.runtime.variant = variant;
  state.runtime.preference = preference;
  const note = state.runtime.fallback ? ` (${state.runtime.fallback})` : '';
  $('backend-used').textContent = `${state.runtime.backend}, ${variant}${note}`;
  console.log(`session created in ${(performance.now() - t0).toFixed(0)} ms on ${state.runtime.backend}`);
}

async function runNetwork(window, roi, rows, numRows) {
  const { ort, session } = state.runtime;
  const m = state.manifest;
  const K = m.classNames.length;
  const feeds = {
    [m.inputNames[0]]: new ort.Tensor('float32', window, [1, 1, ...roi]),
    [m.inputNames[1]]: new ort.Tensor('float32', rows, [numRows, K]),
  };
  const out = await session.run(feeds);
  const tensor = out[m.outputName] || Object.values(out)[0];
  const data = tensor.data instanceof Float32Array ? tensor.data : Float32Array.from(tensor.data);
  const expected = (1 + numRows) * roi[0] * roi[1] * roi[2];
  if (data.length !== expected) throw new Error(`the network returned ${data.length} values, expected ${expected}`);
  return data;
}

async function onFile(event) {
  const file = event.target.files[0];
  if (!file) return;
  try {
    setStatus(`reading ${file.name}…`, 'busy');
    const image = await readNifti(new Uint8Array(await file.arrayBuffer()));
    state.image = image;
    state.fileName = file.name;
    state.result = null;
    $('save').disabled = true;
    $('time').textContent = '';
    const { applyOrientation, ioOrientation, axcodes } = await import('./preprocess.js');
    const ornt = ioOrientation(image.affine);
    const ras = applyOrientation({ dims: image.dims, data: image.data }, ornt);
    const zooms = image.header.pixdim.slice(1, 4);
    const spacing = [0, 0, 0];
    ornt.forEach(([ax], i) => (spacing[ax] = Math.abs(zooms[i]) || 1));
    viewer.setVolume(ras, spacing);
    $('image-info').textContent = `${file.name}: ${image.dims.join(' × ')} voxels, orientation ${axcodes(ornt)}`;
    $('run').disabled = false;
    setStatus('image loaded: choose a structure and press Segment', 'ready');
  } catch (e) {
    console.error(e);
    setStatus(`could not read ${file.name}: ${e.message || e}`, 'error');
  }
}

async function onRun() {
  if (!state.image) return;
  $('run').disabled = true;
  try {
    const rt = state.runtime;
    if (!rt || rt.variant !== $('variant').value || rt.preference !== $('backend').value) await loadModel();
    const choice = $('prompt').value;
    const classIndices = choice === 'all' ? state.manifest.classNames.map((_, i) => i) : [Number(choice)];
    setStatus('segmenting…', 'busy');
    await new Promise((r) => setTimeout(r, 0)); // let the status paint
    const t0 = performance.now();
    const result = await segment({
      image: state.image,
      manifest: state.manifest,
      classIndices,
      run: runNetwork,
      onProgress: (done, total) => setStatus(`segmenting: window ${done} of ${total}`, 'busy'),
    });
    const ms = performance.now() - t0;
    const counts = {};
    for (const v of result.labels) counts[v] = (counts[v] || 0) + 1;
    const threads = state.runtime.ort.env.wasm.numThreads;
    state.result = { ...result, timeMs: ms, classIndices, backend: state.runtime.backend, threads, counts };
    viewer.setVolume(result.ras, viewer.spacing);
    viewer.setLabels(result.rasLabels);
    $('time').textContent = `${ms.toFixed(0)} ms per volume (${result.windows} window${result.windows > 1 ? 's' : ''}, ${state.runtime.backend})`;
    $('save').disabled = false;
    const found = Object.entries(counts).filter(([v]) => v !== '0').map(([v, n]) => `label ${v}: ${n} voxels`);
    setStatus(`done: ${found.length ? found.join(', ') : 'nothing found'}`, 'done');
  } catch (e) {
    console.error(e);
    setStatus(`segmentation failed: ${e.message || e}`, 'error');
  } finally {
    $('run').disabled = false;
  }
}

async function onSave() {
  if (!state.result) return;
  const nii = writeNiftiLabels(state.image, state.result.labels, 'SegOne browser label map');
  const plain = $('format').value === 'nii';
  const bytes = plain ? nii : await gzip(nii);
  const name = plain ? outputName(state.fileName).replace(/\.gz$/, '') : outputName(state.fileName);
  const url = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  state.saved = name;
  setStatus(`saved ${name}`, 'done');
}

const viewer = new SliceViewer($('view'), (k, count) => {
  $('slice').max = String(count - 1);
  $('slice').value = String(k);
  $('slice-label').textContent = `${k + 1} / ${count}`;
});

async function init() {
  try {
    const response = await fetch(`${MODEL_DIR}model.json`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    state.manifest = readManifest(await response.json());
  } catch (e) {
    setStatus(`could not load model/model.json: ${e.message || e}`, 'error');
    return;
  }
  const select = $('prompt');
  state.manifest.prompts.forEach((p, i) => select.add(new Option(p, String(i))));
  if (state.manifest.prompts.length > 1) select.add(new Option('all structures', 'all'));
  for (const plane of Object.keys(PLANES)) $('plane').add(new Option(plane, plane));
  $('file').addEventListener('change', onFile);
  $('run').addEventListener('click', onRun);
  $('save').addEventListener('click', onSave);
  $('slice').addEventListener('input', (e) => viewer.setSlice(Number(e.target.value)));
  $('opacity').addEventListener('input', (e) => viewer.setOpacity(Number(e.target.value) / 100));
  $('plane').addEventListener('change', (e) => viewer.setPlane(e.target.value));
  $('file').disabled = false;
  setStatus('open a NIfTI image (.nii or .nii.gz)', 'ready');
}

init();
