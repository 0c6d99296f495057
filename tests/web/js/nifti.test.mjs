// bundle/web/src/nifti.js against nibabel: the voxels MONAI loads, the affine, and label maps nibabel reads back.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { gzip, isGzip, outputName, parseHeader, readNifti, writeNiftiLabels } from '../../../bundle/web/src/nifti.js';
import { FIXTURES, bytes, cases, f32, maxRelDiff } from './fixtures.mjs';

for (const c of cases.nifti) {
  test(`reads ${c.file} as nibabel does`, async () => {
    const image = await readNifti(bytes(c.file));
    assert.deepEqual(image.dims, c.dims);
    const { worst, at } = maxRelDiff(image.data, f32(c.data));
    assert.ok(worst < 1e-6, `voxel ${at} differs by ${worst}`);
    for (let i = 0; i < 4; i++) {
      for (let j = 0; j < 4; j++) {
        assert.ok(Math.abs(image.affine[i][j] - c.affine[i][j]) < 1e-5, `affine[${i}][${j}] ${image.affine[i][j]} vs ${c.affine[i][j]}`);
      }
    }
  });

  test(`writes a label map in the geometry of ${c.file}`, async () => {
    const image = await readNifti(bytes(c.file));
    const n = image.dims.reduce((a, b) => a * b, 1);
    const labels = new Uint8Array(n).map((_, i) => i % 3);
    const nii = writeNiftiLabels(image, labels);
    assert.equal(nii.length, 352 + n);
    const back = await readNifti(nii);
    assert.deepEqual(back.dims, image.dims);
    assert.deepEqual(Array.from(back.data), Array.from(labels));
    const gz = await gzip(nii);
    assert.ok(isGzip(gz));
    writeFileSync(join(FIXTURES, c.labels_out), gz); // test_units.py reads it back with nibabel
  });
}

test('rejects what is not a NIfTI-1 image', async () => {
  await assert.rejects(readNifti(new Uint8Array(100)), /not a NIfTI file/);
  await assert.rejects(readNifti(new Uint8Array(400)), /not a NIfTI-1 file/);
  const c = cases.nifti[0];
  const full = await readNifti(bytes(c.file));
  const truncated = writeNiftiLabels(full, new Uint8Array(full.data.length)).slice(0, 1000);
  await assert.rejects(readNifti(truncated), /truncated/);
});

test('header fields of a big-endian file', async () => {
  const c = cases.nifti.find((x) => x.name === 'permuted_bigendian');
  const image = await readNifti(bytes(c.file));
  assert.equal(image.header.littleEndian, false);
  assert.equal(parseHeader(image.headerBytes).sformCode, 2);
});

test('output names follow the bundle (SaveLabelMapd)', () => {
  assert.equal(outputName('case_1.nii.gz'), 'case_1_seg.nii.gz');
  assert.equal(outputName('dir/x.y.nii'), 'x.y_seg.nii.gz');
  assert.equal(outputName('C:\\data\\img.NII.GZ'), 'img_seg.nii.gz');
});
