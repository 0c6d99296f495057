// bundle/web/src/preprocess.js against the bundle's preprocessing (configs/inference.json: Orientationd RAS,
// NormalizeIntensityd nonzero/channel-wise) run by MONAI on the same files.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { readNifti } from '../../../bundle/web/src/nifti.js';
import {
  applyOrientation, axcodes, invertTransform, ioOrientation, normalizeNonzero, polarRotation, preprocess,
} from '../../../bundle/web/src/preprocess.js';
import { bytes, cases, f32, maxRelDiff } from './fixtures.mjs';

for (const c of cases.nifti) {
  test(`${c.file}: orientation ${c.codes} and the preprocessed RAS array match MONAI`, async () => {
    const image = await readNifti(bytes(c.file));
    assert.equal(axcodes(ioOrientation(image.affine)), c.codes);
    const pre = preprocess(image);
    assert.deepEqual(pre.dims, c.ras_dims);
    const { worst, at } = maxRelDiff(pre.data, f32(c.ras));
    assert.ok(worst < 1e-5, `voxel ${at}: ${pre.data[at]} vs ${f32(c.ras)[at]}`);
  });

  test(`${c.file}: the inverse orientation restores the input layout`, async () => {
    const image = await readNifti(bytes(c.file));
    const pre = preprocess(image);
    const ids = Float32Array.from(image.data, (_, i) => i);
    const there = applyOrientation({ dims: image.dims, data: ids }, pre.transform);
    const back = applyOrientation(there, invertTransform(pre.transform));
    assert.deepEqual(back.dims, image.dims);
    assert.deepEqual(Array.from(back.data), Array.from(ids));
  });
}

test('polar factor of a sheared, scaled matrix is orthogonal', () => {
  const r = polarRotation([[2, 0.3, 0], [0.1, -1, 0.2], [0, 0.4, 3]]);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      const dot = r[0][i] * r[0][j] + r[1][i] * r[1][j] + r[2][i] * r[2][j];
      assert.ok(Math.abs(dot - (i === j ? 1 : 0)) < 1e-9);
    }
  }
});

test('ties and near-diagonal axes are resolved as nibabel does', () => {
  const eye = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]];
  assert.equal(axcodes(ioOrientation(eye)), 'RAS');
  // 45 degrees in the x-y plane: x goes to R (first maximum), y must then take A
  const s = Math.SQRT1_2;
  assert.equal(axcodes(ioOrientation([[s, -s, 0, 0], [s, s, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), 'RAS');
  assert.equal(axcodes(ioOrientation([[0, 0, -2, 0], [3, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1]])), 'AIL');
});

test('z-score over non-zero voxels leaves zeros and a constant image alone', () => {
  const d = Float32Array.from([0, 1, 2, 3, 0]);
  const stats = normalizeNonzero(d);
  assert.equal(stats.count, 3);
  assert.equal(d[0], 0);
  assert.ok(Math.abs(d[1] + Math.sqrt(1.5)) < 1e-6);
  const flat = Float32Array.from([0, 5, 5]);
  normalizeNonzero(flat);
  assert.deepEqual(Array.from(flat), [0, 0, 0]);
});
