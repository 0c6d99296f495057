// bundle/web/src/pipeline.js: the manifest, prompt rows, the label values of the chosen classes, and the
// all-prompts graph's reduction to the chosen ones.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { readNifti } from '../../../bundle/web/src/nifti.js';
import {
  dropSmallAnswers,
  modelFile,
  promptRows,
  readManifest,
  segment,
  selectClasses,
  voxelMl,
} from '../../../bundle/web/src/pipeline.js';
import { preprocess } from '../../../bundle/web/src/preprocess.js';
import { bytes, cases } from './fixtures.mjs';

const MANIFEST = {
  prompts: ['anterior hippocampus', 'posterior hippocampus'],
  label_values: [1, 2],
  class_names: { 1: 'anterior hippocampus', 2: 'posterior hippocampus' },
  inputs: { image: { shape: [1, 1, 'D', 'H', 'W'] }, prompts: { shape: ['P', 2] } },
  outputs: { probs: { shape: [1, '1+P', 'D', 'H', 'W'] } },
  roi_size: [16, 16, 16],
  overlap: 0.25,
  sliding_window: { mode: 'gaussian', sigma_scale: 0.125 },
  size_divisor: 16,
  orientation: 'RAS',
  normalization: { kind: 'zscore', nonzero: true, channel_wise: true },
  models: { fp32: { file: 'model.onnx', sha256: 'aa' }, int8: { file: 'model.int8.onnx', sha256: 'bb' } },
};

// PromptedSegmenter.forward from per-prompt probabilities p [P, N]: background 1 - max, then normalised
function combine(p, P, n) {
  const out = new Float32Array((P + 1) * n);
  for (let i = 0; i < n; i++) {
    let max = 0;
    for (let k = 0; k < P; k++) max = Math.max(max, p[k * n + i]);
    out[i] = 1 - max;
    let sum = out[i];
    for (let k = 0; k < P; k++) {
      out[(k + 1) * n + i] = p[k * n + i];
      sum += p[k * n + i];
    }
    for (let c = 0; c <= P; c++) out[c * n + i] /= Math.max(sum, 1e-6);
  }
  return out;
}

test('reads the edge manifest', () => {
  const m = readManifest(MANIFEST);
  assert.deepEqual(m.classNames, MANIFEST.prompts);
  assert.deepEqual(m.labelValues, [1, 2]);
  assert.deepEqual(m.inputNames, ['image', 'prompts']);
  assert.equal(m.outputName, 'probs');
  assert.equal(m.dynamicPrompts, true);
  assert.deepEqual(modelFile(m, 'int8'), { name: 'model.int8.onnx', sha256: 'bb' });
  assert.deepEqual(modelFile({ models: {} }, 'int8_weights'), { name: 'model.int8-weights.onnx', sha256: null });
  assert.throws(() => modelFile({ models: {} }, 'int4'), /unknown model variant int4/);
  const fixed = readManifest({ ...MANIFEST, inputs: { image: {}, prompts: { shape: [2, 2] } } });
  assert.equal(fixed.dynamicPrompts, false);
  assert.throws(() => readManifest({ ...MANIFEST, sliding_window: { mode: 'constant' } }), /gaussian only/);
  assert.throws(() => readManifest({ ...MANIFEST, normalization: { kind: 'minmax' } }), /not supported/);
});

test('prompt rows are one-hot', () => {
  assert.deepEqual(Array.from(promptRows([1], 2)), [0, 1]);
  assert.deepEqual(Array.from(promptRows([1, 0], 3)), [0, 1, 0, 1, 0, 0]);
});

test('an all-prompts output reduces to the chosen prompts exactly', () => {
  const n = 500;
  const K = 3;
  // probabilities in [0, 1), spread by a sine hash
  const p = Float32Array.from({ length: K * n }, (_, i) => Math.abs((Math.sin(i * 12.9898) * 43758.5453) % 1));
  const all = combine(p, K, n);
  for (const chosen of [[1], [2, 0]]) {
    const direct = combine(Float32Array.from(chosen.flatMap((k) => Array.from(p.subarray(k * n, (k + 1) * n)))), chosen.length, n);
    const reduced = selectClasses(all, K, chosen);
    assert.equal(reduced.channels, chosen.length + 1);
    for (let i = 0; i < direct.length; i++) assert.ok(Math.abs(direct[i] - reduced.data[i]) < 1e-5, `at ${i}`);
  }
});

test('segment: labels carry the chosen class values, in the input geometry', async () => {
  const c = cases.nifti.find((x) => x.name === 'permuted_bigendian');
  const image = await readNifti(bytes(c.file));
  const manifest = readManifest(MANIFEST);
  const pre = preprocess({ ...image, data: Float32Array.from(image.data) });
  // a stand-in network: the prompt row's class is found where the normalised image is above 1 (class 0) or
  // below -0.5 (class 1)
  const run = async (window, roi, rows, P) => {
    const n = window.length;
    const p = new Float32Array(P * n);
    for (let r = 0; r < P; r++) {
      const k = rows.subarray(r * 2, r * 2 + 2).indexOf(1);
      for (let i = 0; i < n; i++) p[r * n + i] = (k === 0 ? window[i] > 1 : window[i] < -0.5 && window[i] !== 0) ? 0.9 : 0.1;
    }
    return combine(p, P, n);
  };
  const result = await segment({ image, manifest, classIndices: [1], run });
  assert.deepEqual(result.rasDims, pre.dims);
  // the labels in RAS follow the stand-in rule on the preprocessed image, with label value 2 (class 1)
  let agree = 0;
  for (let i = 0; i < pre.data.length; i++) {
    const want = pre.data[i] < -0.5 && pre.data[i] !== 0 ? 2 : 0;
    if (result.rasLabels[i] === want) agree++;
  }
  assert.equal(agree, pre.data.length);
  assert.equal(result.labels.length, image.data.length);
  assert.ok(result.labels.includes(2) && !result.labels.includes(1));
  // back in the input's layout: voxel by voxel the rule on the raw input (z-scoring keeps the order of values)
  const both = await segment({ image, manifest, classIndices: [0, 1], run });
  assert.ok(both.labels.includes(1) && both.labels.includes(2));
});

test('the absent rule: per-class thresholds from the manifest, whole answers of at most them dropped', async () => {
  assert.deepEqual(readManifest(MANIFEST).absentMl, [0, 0]); // no rule, no volumes: nothing is dropped
  const ruled = readManifest({
    ...MANIFEST,
    absent_rule: { min_answer_ml: 0.5, answer_volume_fraction: 0.2 },
    structure_volumes_ml: { 'anterior hippocampus': 10 },
  });
  assert.deepEqual(ruled.absentMl, [2, 0.5]); // max(min_answer_ml, 0.2 x 10 ml); no volume: min_answer_ml
  assert.throws(() => readManifest({ ...MANIFEST, absent_rule: { min_answer_ml: -1 } }), /not valid/);
  assert.equal(voxelMl([[2, 0, 0, 5], [0, 0, 1.5, 0], [0, -1, 0, 0], [0, 0, 0, 1]]), 0.003);
  // 2 ul voxels: class 1 has 3 voxels (6 ul), class 2 has 1 (2 ul)
  const index = Uint8Array.from([0, 1, 1, 2, 1, 0]);
  assert.deepEqual(Array.from(dropSmallAnswers(index.slice(), [0.006, 0.001], 0.002)), [0, 0, 0, 2, 0, 0]);
  assert.deepEqual(Array.from(dropSmallAnswers(index.slice(), [0.0059, 0.002], 0.002)), [0, 1, 1, 0, 1, 0]);
  assert.deepEqual(Array.from(dropSmallAnswers(index.slice(), [0, 0], 0.002)), Array.from(index));
  // through segment: a rule larger than any answer leaves only background
  const c = cases.nifti.find((x) => x.name === 'permuted_bigendian');
  const image = await readNifti(bytes(c.file));
  const run = async (window, roi, rows, P) => {
    const n = window.length;
    const p = new Float32Array(P * n).fill(0.1);
    for (let i = 0; i < n; i++) if (window[i] > 1) p[i] = 0.9; // the first prompt answers where bright
    return combine(p, P, n);
  };
  const plain = await segment({ image, manifest: readManifest(MANIFEST), classIndices: [0], run });
  assert.ok(plain.labels.includes(1));
  const huge = readManifest({ ...MANIFEST, absent_rule: { min_answer_ml: 1e9 } });
  const erased = await segment({ image, manifest: huge, classIndices: [0], run });
  assert.ok(!erased.labels.includes(1) && erased.labels.length === plain.labels.length);
});
