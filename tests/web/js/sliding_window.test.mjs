// bundle/web/src/sliding_window.js against MONAI's sliding_window_inference (gaussian, the bundle's inferer) with
// the elementwise stand-in network of tests/web/fixtures.py.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  argmax, gaussianImportanceMap, padAmounts, slidingWindowInference, windowPositions,
} from '../../../bundle/web/src/sliding_window.js';
import { cases, f32, maxRelDiff } from './fixtures.mjs';

const f = Math.fround;
// tests/web/fixtures.py fake_network: sigmoid, square, cosine
async function fakeNetwork(window) {
  const n = window.length;
  const out = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    const x = window[i];
    out[i] = f(1 / (1 + Math.exp(-x)));
    out[n + i] = f(x * x);
    out[2 * n + i] = f(Math.cos(x));
  }
  return { data: out, channels: 3 };
}

for (const c of cases.sliding) {
  const label = `image ${c.size.join('x')}, window ${c.roi.join('x')}, overlap ${c.overlap}`;

  test(`${label}: window starts and importance map`, () => {
    const padded = c.size.map((s, i) => s + padAmounts(c.size, c.roi)[i].reduce((a, b) => a + b, 0));
    assert.deepEqual(windowPositions(padded, c.roi, c.overlap), c.starts);
    const patch = c.roi.map((r, i) => Math.min(r, padded[i]));
    const { worst } = maxRelDiff(gaussianImportanceMap(patch, 0.125), f32(c.importance));
    assert.ok(worst < 1e-6, `importance map differs by ${worst}`);
  });

  test(`${label}: blended output`, async () => {
    const result = await slidingWindowInference(
      { dims: c.size, data: f32(c.input) },
      { roiSize: c.roi, overlap: c.overlap, sigmaScale: 0.125, predict: fakeNetwork },
    );
    assert.equal(result.channels, c.channels);
    assert.equal(result.windows, c.starts.length);
    const { worst, at } = maxRelDiff(result.data, f32(c.output));
    assert.ok(worst < 1e-5, `output ${at}: ${result.data[at]} vs ${f32(c.output)[at]}`);
  });
}

test('argmax takes the first maximum, as torch.argmax', () => {
  // three channels over four voxels
  const probs = Float32Array.from([0.5, 0.2, 0.4, 0.3, 0.5, 0.5, 0.1, 0.3, 0, 0.3, 0.5, 0.4]);
  assert.deepEqual(Array.from(argmax(probs, 3)), [0, 1, 2, 2]);
});
