// The bundle's preprocessing (configs/inference.json): Orientationd(axcodes="RAS") from the header's affine, then
// NormalizeIntensityd(nonzero=True, channel_wise=True). Volumes are { dims: [n0, n1, n2], data } in C order.

function transpose3(m) {
  return [0, 1, 2].map((i) => [0, 1, 2].map((j) => m[j][i]));
}

function inverse3(m) {
  const [a, b, c] = m[0];
  const [d, e, f] = m[1];
  const [g, h, i] = m[2];
  const A = e * i - f * h;
  const B = -(d * i - f * g);
  const C = d * h - e * g;
  const det = a * A + b * B + c * C;
  if (!Number.isFinite(det) || Math.abs(det) < 1e-12) return null;
  const s = 1 / det;
  return [
    [A * s, -(b * i - c * h) * s, (b * f - c * e) * s],
    [B * s, (a * i - c * g) * s, -(a * f - c * d) * s],
    [C * s, -(a * h - b * g) * s, (a * e - b * d) * s],
  ];
}

/**
 * The closest orthogonal matrix to a full-rank 3x3 matrix (its polar factor U V^T, the matrix nibabel's
 * io_orientation takes from the SVD), by Newton's iteration X <- (X + X^-T) / 2.
 */
export function polarRotation(m) {
  let x = m.map((r) => r.slice());
  for (let it = 0; it < 100; it++) {
    const inv = inverse3(x);
    if (!inv) return null;
    const invT = transpose3(inv);
    let delta = 0;
    const next = x.map((r, i) => r.map((v, j) => {
      const w = 0.5 * (v + invT[i][j]);
      delta = Math.max(delta, Math.abs(w - v));
      return w;
    }));
    x = next;
    if (delta < 1e-15) break;
  }
  return x;
}

/**
 * nibabel.orientations.io_orientation: for each voxel axis, the world axis (0 = R/L, 1 = A/P, 2 = S/I) it runs
 * along most closely and the direction (+1 towards R/A/S, -1 away), chosen greedily as nibabel does.
 *
 * @param {number[][]} affine 4x4 (rows)
 * @returns {number[][]} [[worldAxis, sign], ...] for the three voxel axes
 */
export function ioOrientation(affine) {
  const rzs = [0, 1, 2].map((i) => affine[i].slice(0, 3));
  const zooms = [0, 1, 2].map((j) => Math.sqrt(rzs[0][j] ** 2 + rzs[1][j] ** 2 + rzs[2][j] ** 2) || 1);
  const rs = rzs.map((row) => row.map((v, j) => v / zooms[j]));
  // a singular affine (a zero column): nibabel keeps the non-zero singular directions; the columns themselves
  // give the same nearest axes whenever they are (near) orthogonal, the only case such files come in
  const r = polarRotation(rs) || rs;
  const ornt = [];
  for (let inAx = 0; inAx < 3; inAx++) {
    const col = [r[0][inAx], r[1][inAx], r[2][inAx]];
    if (col.every((v) => Math.abs(v) <= 1e-8)) throw new Error('the image affine has a zero axis');
    let outAx = 0;
    for (let k = 1; k < 3; k++) if (Math.abs(col[k]) > Math.abs(col[outAx])) outAx = k;
    ornt.push([outAx, col[outAx] < 0 ? -1 : 1]);
    for (let j = 0; j < 3; j++) r[outAx][j] = 0;
  }
  const used = new Set(ornt.map((o) => o[0]));
  if (used.size !== 3) throw new Error('the image affine does not determine an orientation');
  return ornt;
}

/** Axis codes ("RAS", "LPI", ...) of an orientation (nibabel.orientations.ornt2axcodes). */
export function axcodes(ornt) {
  const labels = [['L', 'R'], ['P', 'A'], ['I', 'S']];
  return ornt.map(([ax, sign]) => labels[ax][sign > 0 ? 1 : 0]).join('');
}

/**
 * The transform from a volume of orientation `ornt` to RAS (nibabel's ornt_transform(ornt, RAS)): for each input
 * axis, the output axis it becomes and whether it is flipped (-1).
 */
export function toRasTransform(ornt) {
  return ornt.map(([ax, sign]) => [ax, sign]);
}

/**
 * nibabel.orientations.apply_orientation: flips the axes whose entry is -1, then moves input axis i to output axis
 * transform[i][0].
 *
 * @param {{dims: number[], data: TypedArray}} vol C-order volume (one channel)
 * @param {number[][]} transform as toRasTransform returns
 * @returns {{dims: number[], data: TypedArray}} a new volume of the same array type
 */
export function applyOrientation(vol, transform) {
  const inDims = vol.dims;
  const outDims = [0, 0, 0];
  transform.forEach(([ax], i) => (outDims[ax] = inDims[i]));
  const outStrides = [outDims[1] * outDims[2], outDims[2], 1];
  // output offset contributed by each input axis, and its start when flipped
  const step = transform.map(([ax, flip]) => (flip < 0 ? -outStrides[ax] : outStrides[ax]));
  const start = transform.map(([ax, flip], i) => (flip < 0 ? (inDims[i] - 1) * outStrides[ax] : 0));
  const out = new vol.data.constructor(vol.data.length);
  const [n0, n1, n2] = inDims;
  let src = 0;
  for (let a = 0, o0 = start[0]; a < n0; a++, o0 += step[0]) {
    for (let b = 0, o1 = o0 + start[1]; b < n1; b++, o1 += step[1]) {
      for (let c = 0, o2 = o1 + start[2]; c < n2; c++, o2 += step[2]) out[o2] = vol.data[src++];
    }
  }
  return { dims: outDims, data: out };
}

/** The inverse of a transform: applyOrientation(applyOrientation(v, t), invertTransform(t)) is v. */
export function invertTransform(transform) {
  const inv = [null, null, null];
  transform.forEach(([ax, flip], i) => (inv[ax] = [i, flip]));
  return inv;
}

/** Applies an orientation transform to each channel of a [C, n0, n1, n2] C-order array. */
export function applyOrientationChannels(data, numChannels, dims, transform) {
  const n = dims[0] * dims[1] * dims[2];
  const out = new data.constructor(data.length);
  let outDims = null;
  for (let c = 0; c < numChannels; c++) {
    const r = applyOrientation({ dims, data: data.subarray(c * n, (c + 1) * n) }, transform);
    out.set(r.data, c * n);
    outDims = r.dims;
  }
  return { dims: outDims, data: out };
}

/**
 * MONAI NormalizeIntensityd(nonzero=True, channel_wise=True) on one channel, in place: the non-zero voxels become
 * (v - mean) / std over the non-zero voxels (population std; a std of 0 divides by 1); zeros stay zero.
 *
 * @param {Float32Array} data
 * @returns {{mean: number, std: number, count: number}}
 */
export function normalizeNonzero(data) {
  let count = 0;
  let sum = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] !== 0) {
      sum += data[i];
      count++;
    }
  }
  if (count === 0) return { mean: 0, std: 1, count };
  const mean = sum / count;
  let ss = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] !== 0) ss += (data[i] - mean) ** 2;
  }
  let std = Math.sqrt(ss / count);
  if (std === 0) std = 1;
  for (let i = 0; i < data.length; i++) if (data[i] !== 0) data[i] = (data[i] - mean) / std;
  return { mean, std, count };
}

/**
 * The bundle's preprocessing of a read image: reorient to RAS, then z-score over the non-zero voxels.
 *
 * @param {{dims: number[], data: Float32Array, affine: number[][]}} image as readNifti returns
 * @returns {{dims: number[], data: Float32Array, transform: number[][], codes: string}} the network's input volume,
 *   the transform applied (invert it with invertTransform) and the input's axis codes
 */
export function preprocess(image) {
  const ornt = ioOrientation(image.affine);
  const transform = toRasTransform(ornt);
  const ras = applyOrientation({ dims: image.dims, data: image.data }, transform);
  normalizeNonzero(ras.data);
  return { dims: ras.dims, data: ras.data, transform, codes: axcodes(ornt) };
}
