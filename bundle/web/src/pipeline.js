// The whole segmentation of one image, independent of the page: the bundle's preprocessing, sliding windows over
// the network, argmax, the "absent" rule, the chosen classes' label values, and the reorientation undone.

import { applyOrientation, invertTransform, preprocess } from './preprocess.js';
import { argmax, slidingWindowInference } from './sliding_window.js';

/**
 * The settings a runtime needs, from the edge export's model.json (bundle/export/edge.py, docs/edge.md).
 *
 * @param {object} json the parsed model.json
 * @returns {object} classNames, labelValues and prompts (one per one-hot column), inputNames, outputName, roiSize,
 *   overlap, mode, sigmaScale, sizeDivisor, orientation, normalization, dynamicPrompts, models, absentMl (per
 *   class, the largest answer in ml that counts as absent: bundle.transforms.answer_thresholds_ml)
 */
export function readManifest(json) {
  const prompts = json.prompts;
  if (!Array.isArray(prompts) || prompts.length === 0) throw new Error('model.json lists no prompts');
  const labelValues = (json.label_values || prompts.map((_, i) => i + 1)).map(Number);
  if (labelValues.length !== prompts.length) throw new Error('model.json: label_values and prompts differ in length');
  const classNames = labelValues.map((v, i) => (json.class_names && json.class_names[String(v)]) || prompts[i]);
  const inputs = json.inputs || { image: {}, prompts: {} };
  const outputs = json.outputs || { probs: {} };
  const inputNames = Object.keys(inputs);
  const promptShape = (inputs[inputNames[1]] || {}).shape || ['P'];
  const sw = json.sliding_window || {};
  const mode = sw.mode || 'gaussian';
  if (mode !== 'gaussian') throw new Error(`model.json: sliding-window mode ${mode} is not supported (gaussian only)`);
  if ((json.orientation || 'RAS') !== 'RAS') throw new Error(`model.json: orientation ${json.orientation} (RAS only)`);
  const norm = json.normalization || { kind: 'zscore', nonzero: true, channel_wise: true };
  if (norm.kind !== 'zscore' || norm.nonzero !== true) {
    throw new Error(`model.json: normalization ${JSON.stringify(norm)} is not supported (z-score over non-zero voxels)`);
  }
  // the "absent" rule of the exporting config, scaled by the structures' training volumes the model recorded
  const rule = json.absent_rule || {};
  const minMl = Number(rule.min_answer_ml ?? 0);
  const fraction = Number(rule.answer_volume_fraction ?? 0);
  const volumes = json.structure_volumes_ml || {};
  const absentMl = prompts.map((p) => Math.max(minMl, fraction * Number(volumes[p] ?? 0)));
  if (![minMl, fraction, ...absentMl].every((t) => t >= 0)) {
    throw new Error('model.json: absent_rule or structure_volumes_ml is not valid (negative or not a number)');
  }
  return {
    classNames,
    labelValues,
    prompts,
    inputNames,
    outputName: Object.keys(outputs)[0],
    roiSize: (json.roi_size || [48, 64, 48]).map(Number),
    overlap: Number(json.overlap ?? 0.25),
    mode,
    sigmaScale: Number(sw.sigma_scale ?? 0.125),
    cval: Number(sw.cval ?? 0),
    sizeDivisor: Number(json.size_divisor || 1),
    orientation: 'RAS',
    normalization: norm,
    // a fixed P (a number) means the graph always takes every prompt
    dynamicPrompts: typeof promptShape[0] !== 'number',
    models: json.models || {},
    absentMl,
  };
}

// the export's file names, for a manifest that does not list its models
const DEFAULT_FILES = { fp32: 'model.onnx', int8: 'model.int8.onnx', int8_weights: 'model.int8-weights.onnx' };

/** The file name and sha256 of a model variant ("int8_weights", "int8" or "fp32") from the manifest's models. */
export function modelFile(manifest, variant) {
  const entry = manifest.models[variant];
  if (entry && entry.file) return { name: entry.file, sha256: entry.sha256 || null };
  if (!(variant in DEFAULT_FILES)) throw new Error(`unknown model variant ${variant}`);
  return { name: DEFAULT_FILES[variant], sha256: null };
}

/** One-hot prompt rows [P, K] choosing the classes `classIndices` out of K. */
export function promptRows(classIndices, numClasses) {
  const rows = new Float32Array(classIndices.length * numClasses);
  classIndices.forEach((c, p) => (rows[p * numClasses + c] = 1));
  return rows;
}

/**
 * Segments one image read by readNifti.
 *
 * @param {object} args
 * @param {{dims: number[], data: Float32Array, affine: number[][]}} args.image the input
 * @param {object} args.manifest readManifest's result
 * @param {number[]} args.classIndices the classes to segment (indices into manifest.classNames)
 * @param {(window: Float32Array, roiSize: number[], rows: Float32Array, numRows: number) =>
 *   Promise<Float32Array>} args.run the network: [1, 1, *roi] and prompt rows -> probabilities [1, 1 + P, *roi]
 * @param {(done: number, total: number) => void} [args.onProgress]
 * @returns {Promise<object>} labels (input geometry, uint8 label values), rasLabels and ras (the RAS input, for
 *   display), windows, codes (the input's axis codes)
 */
export async function segment({ image, manifest, classIndices, run, onProgress }) {
  const K = manifest.classNames.length;
  for (const c of classIndices) if (!(c >= 0 && c < K)) throw new Error(`no class ${c} in the model`);
  const display = { dims: image.dims, data: image.data };
  const pre = preprocess({ dims: image.dims, data: Float32Array.from(image.data), affine: image.affine });
  const rasDisplay = applyOrientation(display, pre.transform);
  // a graph with a fixed prompt count takes every class; the chosen ones are picked out below
  const runIndices = manifest.dynamicPrompts ? classIndices : [...Array(K).keys()];
  const rows = promptRows(runIndices, K);
  const probs = await slidingWindowInference(pre, {
    roiSize: manifest.roiSize,
    overlap: manifest.overlap,
    sigmaScale: manifest.sigmaScale,
    onProgress,
    predict: async (window, roi) => {
      const out = await run(window, roi, rows, runIndices.length);
      // per window, before the windows are blended, as the network prompted with the chosen classes would be
      return manifest.dynamicPrompts ? { data: out, channels: 1 + runIndices.length } : selectClasses(out, K, classIndices);
    },
  });
  const index = argmax(probs.data, probs.channels);
  dropSmallAnswers(index, classIndices.map((c) => (manifest.absentMl || [])[c] || 0), voxelMl(image.affine));
  const values = [0, ...classIndices.map((c) => manifest.labelValues[c])];
  const rasLabels = new Uint8Array(index.length);
  for (let i = 0; i < index.length; i++) rasLabels[i] = values[index[i]];
  const labels = applyOrientation({ dims: pre.dims, data: rasLabels }, invertTransform(pre.transform)).data;
  return { labels, rasLabels, ras: rasDisplay, windows: probs.windows, codes: pre.codes, rasDims: pre.dims };
}

/** The volume of one voxel in ml: |det| of the affine's 3x3 part, in mm^3, over 1000 (reorienting keeps it). */
export function voxelMl(affine) {
  const [a, b, c] = affine;
  const det =
    a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0]);
  return Math.abs(det) / 1000;
}

/**
 * The "absent" rule, as bundle.transforms.DropSmallAnswersd: every class p (1..P) of the argmax `index` whose whole
 * answer is at most thresholdsMl[p - 1] ml becomes background (0), in place.
 */
export function dropSmallAnswers(index, thresholdsMl, voxelVolumeMl) {
  if (!thresholdsMl.some((t) => t > 0)) return index;
  const counts = new Float64Array(thresholdsMl.length + 1);
  for (let i = 0; i < index.length; i++) counts[index[i]]++;
  const drop = thresholdsMl.map((t, p) => counts[p + 1] > 0 && counts[p + 1] * voxelVolumeMl <= t);
  if (!drop.some(Boolean)) return index;
  for (let i = 0; i < index.length; i++) if (index[i] > 0 && drop[index[i] - 1]) index[i] = 0;
  return index;
}

/**
 * For a graph that always segments all K classes: from its probabilities [1 + K, N] (background 1 - max_k p_k,
 * then everything divided by the sum s), the probabilities of the network prompted with `classIndices` only. Since
 * background + max_k probs_k = 1 / s, each p_k = probs_k / (background + max_k probs_k); the background becomes
 * 1 - max over the chosen classes and the result is normalised again, as PromptedSegmenter.forward does.
 */
export function selectClasses(data, K, classIndices) {
  const n = data.length / (K + 1);
  const P = classIndices.length;
  const out = new Float32Array((P + 1) * n);
  for (let i = 0; i < n; i++) {
    let maxAll = 0;
    for (let k = 0; k < K; k++) maxAll = Math.max(maxAll, data[(k + 1) * n + i]);
    const scale = 1 / Math.max(data[i] + maxAll, 1e-12); // 1 / normaliser
    let maxSel = 0;
    let sum = 0;
    for (let p = 0; p < P; p++) {
      const v = data[(classIndices[p] + 1) * n + i] * scale;
      out[(p + 1) * n + i] = v;
      maxSel = Math.max(maxSel, v);
      sum += v;
    }
    out[i] = 1 - maxSel;
    sum += out[i];
    for (let c = 0; c <= P; c++) out[c * n + i] /= Math.max(sum, 1e-6);
  }
  return { data: out, channels: P + 1 };
}
